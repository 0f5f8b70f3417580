"""``python -m sglang.launch_server``: the fake SGLang (tests/runtime_engines/fake_server.py)."""

if __name__ == "__main__":
    from fake_server import main

    main("sglang")
