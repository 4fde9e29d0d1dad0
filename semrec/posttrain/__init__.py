"""Post-training after supervised fine-tuning (``train.post``): GRPO over trie-constrained
beams and DPO / S-DPO.

- :mod:`~semrec.posttrain.losses`: the losses on plain tensors;
- :mod:`~semrec.posttrain.rewards`: the GRPO rewards (``REWARDS``);
- :mod:`~semrec.posttrain.log_probs`: completion log-probabilities (one prompt encoding a
  group) and the frozen SFT reference;
- :mod:`~semrec.posttrain.objectives`: what a step computes (GRPO, preference);
- :mod:`~semrec.posttrain.module`: the LightningModule;
- :mod:`~semrec.posttrain.data`: training prefixes as prompts.

The run's stage is :mod:`semrec.pipeline.post_train`.
"""
