"""Training: presets, the loop, the step, its state (resume) and the schedule."""
