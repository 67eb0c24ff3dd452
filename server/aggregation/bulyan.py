"""Bulyan (El Mhamdi et al. 2018): Krum selection, then a trimmed mean around the median; Flower's strategy.

It tolerates f malicious of n clients per round only if n >= 4f + 3; a setting that cannot stops before training.
"""

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import Bulyan

from fl_defense.config import expected_malicious
from fl_defense.errors import ConfigError
from fl_defense.server.aggregation.base import flower_rule


def _check_enough_clients(cfg: Mapping[str, Any]) -> None:
    n, f, frac = cfg["clients-per-round"], expected_malicious(cfg), cfg["malicious-fraction"]
    if n >= 4 * f + 3:
        return
    enough = next((c for c in range(n, 100_000) if c >= 4 * int(round(frac * c)) + 3), None)
    allowed = f"clients-per-round >= {enough} (num-clients as many)" if enough else "a malicious-fraction below 0.25"
    raise ConfigError(f"config key 'clients-per-round': bulyan tolerates f malicious of n clients per round only if "
                      f"n >= 4f+3; f = round(malicious-fraction {frac} x {n}) = {f} needs n >= {4 * f + 3}, got "
                      f"{n}; allowed: {allowed}")


BulyanRule = flower_rule("bulyan", Bulyan, "Bulyan (El Mhamdi et al. 2018): Krum selection then a trimmed mean; needs "
                         "n >= 4f+3; Flower's", kwargs=lambda cfg: {"num_malicious_nodes": expected_malicious(cfg)},
                         checks=[_check_enough_clients])
