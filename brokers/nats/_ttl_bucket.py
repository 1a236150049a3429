"""A KV bucket whose entries lapse after a TTL: the leases' and the link board's."""

from __future__ import annotations

import dataclasses

import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from meshgate.brokers.nats._names import kv_stream

__all__ = ["ttl_bucket"]


async def ttl_bucket(js: JetStreamContext, bucket: str, *, ttl: float, storage: StorageType, replicas: int) -> KeyValue:
    """Opens ``bucket`` (creating it), its entries lapsing ``ttl`` seconds after their last write.

    The bucket outlives its writers: one made with another TTL (a changed settings.lease_ttl)
    is brought to ``ttl``, or its entries would lapse at the old one.
    """
    try:
        kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=1, ttl=ttl, storage=storage, replicas=replicas)
        )
    info = await js.stream_info(kv_stream(bucket))
    if info.config.max_age is None or abs(info.config.max_age - ttl) > 0.001:
        window = min(info.config.duplicate_window or ttl, ttl)
        await js.update_stream(dataclasses.replace(info.config, max_age=ttl, duplicate_window=window))
    return kv
