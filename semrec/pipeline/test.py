"""The test stage of a run: ranking metrics of the trained model, the registered evaluators,
the baselines of the same split, and every test user's target rank."""

from __future__ import annotations

import torch

from semrec.artifacts import read_json
from semrec.evaluation.baselines import run_baselines
from semrec.evaluation.evaluators import EVALUATORS, EvaluationInputs
from semrec.evaluation.fusion import reciprocal_rank_fusion
from semrec.factories import decoding, training
from semrec.factories.model import prompt_formatter
from semrec.known_warnings import hide_known_warnings
from semrec.metrics.per_user import PerUserRanks
from semrec.metrics.ranking import evaluate_ranked
from semrec.pipeline.context import RunContext
from semrec.pipeline.model import POST_VALID_METRICS, ModelStage
from semrec.pipeline.tokenizers import TokenizerStage


class TestStage:
    """Evaluates a trained model on the test users (see the module docstring)."""

    def __init__(self, context: RunContext, tokenizers: TokenizerStage, model: ModelStage) -> None:
        self.context = context
        self.tokenizers = tokenizers
        self.model = model
        self.ranks: PerUserRanks | None = None  # every test user's target rank, after test()

    def test(self, trained) -> dict[str, float]:
        """Metrics of ``trained`` = (module, datamodule, hf_tokenizer) from the train stage."""
        context, config = self.context, self.context.config
        data, candidates = self.tokenizers.inputs.data, self.tokenizers.inputs.candidates
        module, datamodule, hf_tokenizer = trained
        with context.timed("test"), hide_known_warnings():
            # each process of a multi-process run evaluates its share of the test users;
            # the metrics and per-user ranks are gathered over all of them
            training.test_trainer(config).test(module, datamodule=datamodule, verbose=False)
        if not context.rank_zero:
            return {}
        metrics: dict[str, float] = {}
        for part in ("test", "test_beam", "test_subset"):
            for name, value in module.last_metrics.get(part, {}).items():
                metrics[f"{part}/{name}"] = value
        if candidates is not None:
            ranked = candidates.metrics(datamodule.test_examples, config.eval.ks, data.split)
            metrics.update({f"retriever/{key}": value for key, value in ranked.items()})
        valid_file = context.run_dir / "valid_metrics.json"
        post_file = context.run_dir / POST_VALID_METRICS
        if config.train.post is not None and post_file.exists():
            # the post-trained weights' validation; SFT's own stays beside it
            metrics.update({f"valid/{k}": v for k, v in read_json(post_file).items()})
            if valid_file.exists():
                metrics.update({f"sft_valid/{k}": v for k, v in read_json(valid_file).items()})
        elif valid_file.exists():
            metrics.update({f"valid/{k}": v for k, v in read_json(valid_file).items()})
        inputs = self.evaluation_inputs(module.model, hf_tokenizer, datamodule)
        for name in EVALUATORS:
            evaluator = EVALUATORS.get(name)()
            if evaluator.applies(inputs):
                with context.timed(name):
                    metrics.update(evaluator.evaluate(inputs))
        examples = {"test": datamodule.test_examples, "valid": datamodule.valid_examples}
        exclude = {part: datamodule.excluded_items(part) for part in examples}
        baselines = run_baselines(
            config.eval, config.seed, data.split, examples, exclude, context.echo
        )
        context.timings.update({f"baseline_{name}": s for name, s in baselines.seconds.items()})
        methods = {
            "semrec": module.last_ranks.get("test"),
            **{name: ranks.get("test") for name, ranks in baselines.ranks.items()},
        }
        fusion = config.eval.fusion
        if fusion is not None and "test" in module.last_items:
            name = f"semrec+{fusion.baseline}"
            fused = reciprocal_rank_fusion(
                module.last_items["test"],
                baselines.rankings[fusion.baseline]["test"],
                weight=fusion.weight,
                rrf_k=fusion.rrf_k,
            )
            targets = torch.tensor([ex.target for ex in datamodule.test_examples])
            scores, methods[name] = evaluate_ranked(
                fused, targets, list(config.eval.ks), data.dataset.num_items
            )
            metrics.update({f"{name}/test/{key}": value for key, value in scores.items()})
        self.ranks = PerUserRanks.of_examples(
            datamodule.test_examples,
            data.dataset.user_ids,
            k=max(config.eval.ks),
            methods=methods,
        )
        return {**metrics, **baselines.metrics}

    def evaluation_inputs(self, model, hf_tokenizer, datamodule) -> EvaluationInputs:
        """What the registered evaluators read of this run."""
        context, tokenizers, stage = self.context, self.tokenizers, self.model
        config = context.config
        return EvaluationInputs(
            config=config,
            model=model,
            datamodule=datamodule,
            dataset=tokenizers.inputs.data.dataset,
            tasks=stage.annotations.tasks,
            run_dir=context.run_dir,
            echo=context.echo,
            task_context=lambda: stage.task_context,
            formatter=lambda: stage.formatter(hf_tokenizer),
            plain_formatter=lambda: prompt_formatter(config.model, hf_tokenizer),
            item_trie=lambda: tokenizers.trie(hf_tokenizer),
            user_trie=lambda: tokenizers.user_trie(hf_tokenizer),
            item_sids=lambda: tokenizers.tokenizer.sid_strings(),
            beam_search=lambda: decoding.beam_search(config.eval),
        )
