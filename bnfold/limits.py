"""Bounds on the work bnfold does for one model (a module without imports: the CLI reads its defaults
before anything heavy is loaded)."""

#: Seconds a validation may run (both models, every input set) before it is abandoned and
#: reported as not finished: a model whose run never ends (a Loop with a huge trip count) must
#: not stall a batch.
VALIDATE_TIMEOUT = 300.0
