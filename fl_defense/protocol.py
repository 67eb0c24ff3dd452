"""The names of the records that the server and the clients exchange, in one place for both sides.

Plain strings only (no Flower here): `fl_defense.server` and `fl_defense.clients` build and read the
Flower messages with them.
- Every message from the server holds a ConfigRecord `CONFIG` with the run's resolved config as JSON
  (`RUN_CONFIG`); Flower adds `SERVER_ROUND` to train messages.
- A QUERY reply holds a ConfigRecord `CLIENT` with the node's `PARTITION_ID`.
- A train message holds the global model under `ARRAYS` and, under a strategy wrapper that trains a second
  model (shadow learning), that model under `SHADOW_ARRAYS`; the reply returns each trained under the same key,
  the MetricRecord `METRICS` with exactly `METRIC_KEYS`, and `CLIENT` with exactly its `PARTITION_ID`.
  What a client says about itself beyond that is not read: who is malicious the server knows from the config.
"""

CONFIG = "config"
RUN_CONFIG = "run-config"
SERVER_ROUND = "server-round"

CLIENT = "client"
PARTITION_ID = "partition-id"

ARRAYS = "arrays"
SHADOW_ARRAYS = "shadow-arrays"

METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
METRIC_KEYS = frozenset({NUM_EXAMPLES, TRAIN_LOSS})
