"""Pseudonymisation: customer ids become keyed hashes (HMAC-SHA256) computed inside Spark.

The key comes from the environment (``CRM_PII_KEY`` by default), never from a file, so the
outputs cannot be joined back to raw ids without it. HMAC is built from Spark's own ``sha2``
on the padded key (RFC 2104), so no Python UDF runs per row and no id leaves the executors.
"""
from __future__ import annotations

import hashlib
import logging
import os

from pyspark.sql import Column
from pyspark.sql import functions as F

log = logging.getLogger(__name__)

#: Publicly known key used only in demo mode; outputs made with it are not protected.
DEMO_KEY = "crm-mining-demo-key-not-secret"

_BLOCK = 64  # SHA-256 block size in bytes


class MissingKeyError(RuntimeError):
    """No pseudonymisation key in the environment outside demo mode."""


def resolve_key(*, key_env: str = "CRM_PII_KEY", demo: bool = False) -> bytes:
    """Return the HMAC key from ``key_env``; in demo mode fall back to :data:`DEMO_KEY` loudly."""
    value = os.environ.get(key_env)
    if value:
        return value.encode("utf-8")
    if demo:
        log.warning(
            "DEMO MODE: customer ids are pseudonymised with the public demo key; "
            "set %s for real data", key_env,
        )
        return DEMO_KEY.encode("utf-8")
    raise MissingKeyError(
        f"environment variable {key_env} is not set: it holds the key that pseudonymises "
        f"customer ids (HMAC-SHA256). Set it (e.g. export {key_env}=$(openssl rand -hex 32)) "
        f"or run the demo (run.demo=true)."
    )


def _padded(key: bytes) -> bytes:
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    return key.ljust(_BLOCK, b"\x00")


def hmac_sha256(value: Column, key: bytes) -> Column:
    """HMAC-SHA256 of a string column as 64 hex characters; null stays null.

    Examples
    --------
    >>> df.select(hmac_sha256(F.col("customer_id"), b"secret").alias("customer_key"))
    """
    k = _padded(key)
    inner_pad = bytes(b ^ 0x36 for b in k)
    outer_pad = bytes(b ^ 0x5C for b in k)
    message = F.encode(value.cast("string"), "UTF-8")
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_pad), message), 256))
    return F.sha2(F.concat(F.lit(outer_pad), inner), 256)


def pseudonymize(value: Column, key: bytes, *, namespace: str) -> Column:
    """Keyed hash of an id within a namespace (``retail``, ``bank``), as a short key.

    The namespace keeps equal raw ids of different systems apart. 24 hex characters
    (96 bits) keep collisions negligible for billions of customers.
    """
    tagged = F.concat(F.lit(f"{namespace}:"), F.trim(value.cast("string")))
    return F.when(value.isNull(), F.lit(None)).otherwise(F.substring(hmac_sha256(tagged, key), 1, 24))
