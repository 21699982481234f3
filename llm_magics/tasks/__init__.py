"""Training tasks: how rows become batches, losses, metrics and predictions.

Methods that train (`%finetune`, `%lora`) pick a task and hand it to the
engine's `TrainLoop`; the loop never knows which task it runs.
"""
