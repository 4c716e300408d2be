"""Outlier analysis: residual sinks, massive activations, attention sinks, gate statistics."""
