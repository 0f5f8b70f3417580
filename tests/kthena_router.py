"""Kthena's KV-aware router reading Redis, replayed line for line in Python.

Source: volcano-sh/kthena ``pkg/kthena-router/scheduler/plugins/kvcache_aware.go`` at
3cc057284c34469fcb0ed22a12dac84b1d120719 (2026-08-21), which carries PR #1422 (owners
are ``name.namespace``, candidates filtered by that identifier) and PR #1463 (ownership
written at or before the pod's last container start is dropped, a same-second write
included: ``freshOwners``).  The router cannot run here (it needs a cluster); these
functions do what its Go does, against the real redis-server the tests start:

- ``tokens_to_block_hashes``: ``TokensToBlockHashes`` (``chunkTokens`` into
  ``blockSizeToHash`` pieces, at most ``maxBlocksToMatch``, ``computeStandardizedHash``);
- ``query``: ``queryRedisForBlocks`` (one pipelined ``HGETALL`` per block, ``freshOwners``);
- ``score``: ``Score``'s candidate filtering and ``calculatePodScores`` (prefix match);
- ``gc_stale_fields``: ``gcStaleFields``/``deleteStaleFields`` (fields older than 24 h
  deleted; an unparsable timestamp kept).
"""

import hashlib
from typing import Dict, List, Mapping, Sequence

KEY_PREFIX = "matrix:kv:block:"
FIELD_FRESH_SECONDS = 24 * 3600  # kvCacheFieldFreshDuration
DEFAULT_BLOCK_SIZE = 16  # defaultBlockSizeToHash
DEFAULT_MAX_BLOCKS = 128  # defaultMaxBlocksToMatch


def compute_standardized_hash(token_ids: Sequence[int]) -> int:
    if not token_ids:
        return 0
    digest = hashlib.sha256(b"".join(int(t).to_bytes(4, "big") for t in token_ids)).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFFFFFFFFFFFFFF


def tokens_to_block_hashes(
    tokens: Sequence[int], block_size: int = DEFAULT_BLOCK_SIZE, max_blocks: int = DEFAULT_MAX_BLOCKS
) -> List[int]:
    chunks = []
    i = 0
    while i < len(tokens) and len(chunks) < max_blocks:
        chunks.append(tokens[i : i + block_size])
        i += block_size
    return [compute_standardized_hash(chunk) for chunk in chunks]


def _parse_int(text: str):
    try:
        return int(text, 10)  # strconv.ParseInt(ts, 10, 64)
    except ValueError:
        return None


def fresh_owners(entries: Mapping[str, str], owner_started_at: Mapping[str, int]) -> List[str]:
    owners = []
    for owner, written_at in entries.items():
        if owner in owner_started_at:
            written = _parse_int(written_at)
            if written is not None and written <= owner_started_at[owner]:
                continue  # written at or before the containers last started: the cache is gone
        owners.append(owner)
    return owners


def query(client, block_hashes: Sequence[int], model: str, owner_started_at: Mapping[str, int]) -> Dict[int, List[str]]:
    pipe = client.pipeline(transaction=False)
    for h in block_hashes:
        pipe.hgetall(f"{KEY_PREFIX}{model}@{h}")
    found: Dict[int, List[str]] = {}
    for h, entries in zip(block_hashes, pipe.execute()):
        if not entries:
            continue
        decoded = {k.decode(): v.decode() for k, v in entries.items()}
        pods = fresh_owners(decoded, owner_started_at)
        if pods:
            found[h] = pods
    return found


def calculate_pod_scores(block_hashes: Sequence[int], block_to_pods: Mapping[int, List[str]]) -> Dict[str, int]:
    if not block_hashes:
        return {}
    first = block_to_pods.get(block_hashes[0])
    if not first:
        return {}
    scores = {pod: 1 for pod in first}
    for i in range(1, len(block_hashes)):
        pods = block_to_pods.get(block_hashes[i])
        if not pods:
            break
        active = 0
        for pod in pods:
            if scores.get(pod) == i:
                scores[pod] += 1
                active += 1
        if active == 0:
            break
    total = len(block_hashes)
    return {pod: int(matched / total * 100) for pod, matched in scores.items()}


def score(
    client, tokens: Sequence[int], model: str, candidates: Mapping[str, int], block_size: int = DEFAULT_BLOCK_SIZE
) -> Dict[str, int]:
    """Scores of the candidate pods (``name.namespace`` -> last container start, unix seconds)."""
    hashes = tokens_to_block_hashes(tokens, block_size)
    block_to_pods = query(client, hashes, model, {o: s for o, s in candidates.items() if s > 0})
    kept = {}
    for h, pods in block_to_pods.items():
        mine = [p for p in pods if p in candidates]
        if mine:
            kept[h] = mine
    scores = calculate_pod_scores(hashes, kept)
    return {pod: s for pod, s in scores.items() if pod in candidates}


def gc_stale_fields(client, now: float) -> int:
    """One full pass of ``gcStaleFields`` (the router does 100 keys an hour); fields deleted."""
    deleted = 0
    for key in client.scan_iter(match=KEY_PREFIX + "*", count=100):
        stale = [
            pod
            for pod, ts in client.hgetall(key).items()
            if _parse_int(ts.decode()) is not None and now - _parse_int(ts.decode()) > FIELD_FRESH_SECONDS
        ]
        if stale:
            deleted += client.hdel(key, *stale)
    return deleted
