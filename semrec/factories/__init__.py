"""Pure factories: the components of a run built from its config.

Each function takes config sections and already-built collaborators and returns a new
object; none of them reads or writes the run directory (that is
:class:`~semrec.pipeline.Run`'s job, which calls them in stage order).
"""
