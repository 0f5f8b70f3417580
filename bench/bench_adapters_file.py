"""Reading an adapters file: Patio's strict YAML subset against PyYAML (what the LoRA syncer used).

    .venv/bin/python bench/bench_adapters_file.py [--adapters 256] [--rounds 7]

The input is the syncer's documented ConfigMap shape (tests/lora_syncer_data) grown to
``--adapters`` entries.  Both readers parse the same text in the same process; the median of
``--rounds`` timed rounds is reported, with PyYAML's pure-Python ``SafeLoader`` (what
``yaml.safe_load`` uses) and its libyaml ``CSafeLoader`` where available, and the ratio
incumbent / Patio (> 1: Patio is faster).  Also the peak memory of one parse (tracemalloc).
Timings vary with the machine; only the ratios of one run are meaningful.
"""

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from patio.lora.desired import load_desired  # noqa: E402
from patio.lora.yaml_subset import parse  # noqa: E402


def document(adapters: int) -> str:
    lines = ["vLLMLoRAConfig:", "  name: bench", "  port: 8000", "  defaultBaseModel: meta-llama/Llama-3.1-8B-Instruct"]
    lines += ["  ensureExist:", "    models:"]
    for i in range(adapters):
        lines += [f"    - id: adapter-{i}  # comment", f"      source: s3://adapters/adapter-{i}/"]
    lines += ["  ensureNotExist:", "    models:", "    - id: old", "      source: 'yard1/llama-2-7b-sql-lora-test'"]
    return "\n".join(lines) + "\n"


def timed(func: Callable[[], Any], rounds: int) -> float:
    func()  # warm
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        func()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def peak_kib(func: Callable[[], Any]) -> float:
    tracemalloc.start()
    func()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import yaml

    text = document(args.adapters)
    assert parse(text) == yaml.safe_load(text)
    readers: Dict[str, Callable[[], Any]] = {
        "patio yaml_subset.parse": lambda: parse(text),
        "patio load_desired (parse + validate)": lambda: load_desired(text.encode(), "/f", 100000),
        "PyYAML safe_load (SafeLoader)": lambda: yaml.load(text, Loader=yaml.SafeLoader),
    }
    if hasattr(yaml, "CSafeLoader"):
        readers["PyYAML CSafeLoader (libyaml)"] = lambda: yaml.load(text, Loader=yaml.CSafeLoader)
    print(f"{args.adapters} adapters, {len(text)} bytes, median of {args.rounds} rounds")
    results = {name: timed(func, args.rounds) for name, func in readers.items()}
    base = results["patio yaml_subset.parse"]
    for name, seconds in results.items():
        peak = peak_kib(readers[name])
        print(f"  {name:40s} {seconds * 1000:8.2f} ms  peak {peak:8.0f} KiB  time / Patio's {seconds / base:5.2f}")


if __name__ == "__main__":
    main()
