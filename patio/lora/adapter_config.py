"""Would vLLM's filesystem resolver take this adapter?  Sans-IO: bytes of ``adapter_config.json`` in.

vLLM's ``lora_filesystem_resolver`` (``vllm/plugins/lora_resolvers/filesystem_resolver.py``,
vllm 0.32.0) loads ``CACHE_DIR/NAME`` only when its ``adapter_config.json`` says
``"peft_type": "LORA"`` and ``"base_model_name_or_path"`` equals the model the engine was
started with (``model_config.model``: the ``--model`` value, which ``/v1/models`` shows as the
base model's ``root``).  Anything else is skipped without a word: the request for the
adapter answers 404 "does not exist" as if nothing were there.  So Patio checks before it
puts a copy in vLLM's sight, and the adapter is ``failed`` with the reason instead.

An adapter trained against the same weights under another name (``meta-llama/Llama-3.1-8B``
while vLLM serves ``/models/llama``) is common.  When the adapters file names the adapter's
base model (``base-model``, ``defaultBaseModel``, ``base_model``) and that is the model the
engine serves (its id or its root), the user has said the adapter belongs to it: Patio's copy
then names the engine's root, and keeps the original beside it (``.patio/``).
"""

import json
from typing import Any, Mapping, Optional

from patio import jsontext
from patio.errors import BadRequest

CONFIG_FILE = "adapter_config.json"
# A PEFT config is a few KB; a larger file is not one.
MAX_CONFIG_BYTES = 1024 * 1024
# What the resolver compares.
PEFT_TYPE, BASE_FIELD = "peft_type", "base_model_name_or_path"


class NotResolvable(BadRequest):
    """vLLM's resolver would skip this adapter; the reason says why."""

    error_type = "adapter_not_resolvable"


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:199] + "…"


def resolver_config(raw: Optional[bytes], served: Mapping[str, str], asked_base: Optional[str]) -> Optional[bytes]:
    """None when vLLM's resolver takes the adapter as it is; the config to write instead when the
    file asked for the served base model; ``NotResolvable`` otherwise.

    ``served``: the engine's base models, id -> root (``patio.lora.served.ModelList.base``).
    """
    if raw is None:
        raise NotResolvable(f"the adapter has no {CONFIG_FILE}; vLLM's resolver would skip it")
    if len(raw) > MAX_CONFIG_BYTES:
        raise NotResolvable(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes; it is not a PEFT config")
    try:
        config = jsontext.loads(raw)
    except ValueError:
        raise NotResolvable(f"{CONFIG_FILE} is not JSON; vLLM's resolver would fail on it") from None
    if not isinstance(config, dict):
        raise NotResolvable(f"{CONFIG_FILE} is not a JSON object; vLLM's resolver would fail on it")
    peft = config.get(PEFT_TYPE)
    if peft != "LORA":
        raise NotResolvable(
            f'{CONFIG_FILE} says {PEFT_TYPE} {_shown(peft)}, not "LORA"; vLLM\'s resolver loads LoRA adapters only'
        )
    roots = sorted(set(served.values()))
    if not roots:
        raise NotResolvable("the engine lists no base model, so the adapter's base model cannot be checked")
    base = config.get(BASE_FIELD)
    if base in roots:
        return None
    engine = ", ".join(repr(r) for r in roots)
    if asked_base is not None and (asked_base in served or asked_base in roots):
        root = served.get(asked_base, asked_base)
        fixed = dict(config)
        fixed[BASE_FIELD] = root
        return (json.dumps(fixed, indent=2, sort_keys=True) + "\n").encode("utf-8")
    if asked_base is not None:
        raise NotResolvable(
            f"the adapters file says the base model is {_shown(asked_base)}, but the engine serves {engine}"
        )
    raise NotResolvable(
        f"{CONFIG_FILE} names base model {_shown(base)}, but the engine serves {engine}: vLLM's resolver "
        f"would skip it; if the adapter belongs to this model, say so with base-model (or base_model) "
        "in the adapters file and Patio's copy will name it"
    )
