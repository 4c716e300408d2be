"""Training-time monitor of the residual stream's peak magnitude, per layer.

Forward hooks on the embedding and on every transformer layer of a Megatron ``GPTModel``
record ``max |h|`` of each residual-stream state H_0..H_D (the paper's "Outliers" statistic,
Table 1 / Fig. 3) for the forward passes run while the monitor is armed. Layers are keyed by
their global layer number, so pipeline stages can be merged.
"""

from __future__ import annotations

from typing import Dict

import torch


class PeakActivationMonitor:
    def __init__(self, model):
        self.peaks: Dict[str, float] = {}
        self.armed = False
        self._handles = []
        if getattr(model, "pre_process", True) and hasattr(model, "embedding"):
            self._handles.append(model.embedding.register_forward_hook(self._hook("embedding")))
        for layer in model.decoder.layers:
            self._handles.append(layer.register_forward_hook(self._hook(f"layer_{layer.layer_number:03d}")))

    def _hook(self, name):
        def record(module, inputs, output):
            if not self.armed:
                return
            hidden = output[0] if isinstance(output, tuple) else output
            peak = float(hidden.detach().abs().max())
            self.peaks[name] = max(peak, self.peaks.get(name, 0.0))

        return record

    def arm(self) -> None:
        self.peaks = {}
        self.armed = True

    def collect(self) -> Dict[str, float]:
        """Stop recording; the per-state maxima (all-reduced MAX over ranks if distributed)."""
        self.armed = False
        names = sorted(self.peaks)
        if torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.peaks)
            merged: Dict[str, float] = {}
            for peaks in gathered:
                for k, v in peaks.items():
                    merged[k] = max(v, merged.get(k, 0.0))
            return dict(sorted(merged.items()))
        return {k: self.peaks[k] for k in names}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
