"""Strategy wrappers by name (`strategy-wrapper=`), one module each: defenses that act in every round's
aggregation around the aggregation rule (shadow learning), and the algorithms only they use (SPECTRE)."""

from collections.abc import Mapping
from typing import Any

from fl_defense.server.strategy import ServerContext, StrategyWrapper

from fl_defense.registry import STRATEGY_WRAPPERS


def wrap(inner: StrategyWrapper, cfg: Mapping[str, Any], context: ServerContext) -> StrategyWrapper:
    """The configured strategy wrapper around `inner`, or `inner` itself for `strategy-wrapper=none`."""
    if cfg["strategy-wrapper"] == "none":
        return inner
    wrapper: StrategyWrapper = STRATEGY_WRAPPERS[cfg["strategy-wrapper"]](inner, cfg, context)
    return wrapper


__all__ = ["wrap"]
