"""Entry points: the CLI, the in-process runner, experiment configs.

Flower reads its log level once, when first imported; every entry point imports this package first,
so Flower's per-round INFO logging and its telemetry are off unless the environment says otherwise.
"""

import os

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_LOG_LEVEL": "WARNING",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}
for _key, _value in QUIET_ENV.items():
    os.environ.setdefault(_key, _value)
