"""Speed layer: the realtime tiles of the views (``realtime``: the consumer
and its one-transaction-per-micro-batch protocol; ``microbatch``; ``seen``:
the per-entity dedup ids stored with the tiles); streaming scoring comes
with issue 13. Meets the other layers only in lamina.schemas, the stores,
the models package and the core."""
