"""The round's evaluation: BA/ASR (and ASR's two parts) of the model the server deploys, and BA/ASR of the trained
one where they differ."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord

from fl_defense.metrics import Evaluator
from fl_defense.models import BackdoorModel
from fl_defense.server.strategy import DefenseStrategy


class RoundEvaluator:
    """Measures a round's global model as deployed.

    Without a wrapper that serves another model, the deployed model is the trained one. With one (shadow
    learning), the row's `ba`/`asr` are the served model's once it exists (measured once per version), the
    trained model's numbers are beside them (`backbone_ba`, `backbone_asr`), and `deployed` names which one
    was served. ASR's two parts (`clean_to_target`, `asr_beyond_clean`: `fl_defense.metrics.measure`) and DBA's
    per-piece ASR (`asr_pieces`) are the deployed model's.
    """

    def __init__(self, model: BackdoorModel, evaluate: Evaluator, strategy: DefenseStrategy) -> None:
        self.model, self.evaluate, self.strategy = model, evaluate, strategy
        self._served: dict[int, dict[str, float]] = {}

    def _measure(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.load_state_dict(state)
        return self.evaluate.measure(self.model)

    def __call__(self, arrays: ArrayRecord) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The deployed model's state and the row's fields (`ba`, `asr`, and what else applies)."""
        state = arrays.to_torch_state_dict()
        fields: dict[str, Any] = self._measure(state)
        server = self.strategy.server()
        if server is not None:
            fields.update({f"{server.trains}_ba": fields["ba"], f"{server.trains}_asr": fields["asr"],
                           "deployed": server.trains})
            served = server.deployed()
            if served is not None:
                record, version = served
                state = record.to_torch_state_dict()
                if version not in self._served:
                    self._served[version] = self._measure(state)
                fields.update(self._served[version], deployed=server.serves)
        if self.evaluate.attack.extra_triggers():
            self.model.load_state_dict(state)
            fields["asr_pieces"] = self.evaluate.pieces(self.model)
        return state, fields
