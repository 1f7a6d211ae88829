"""The training engine: the train state, the jitted step and its dispatch, the optimizer, the losses, the
init stage, evaluation, and the device/process set-up they run on (docs/scale_out.md)."""
