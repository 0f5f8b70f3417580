"""``python -m vllm.entrypoints.openai.api_server``: the fake vLLM (tests/runtime_engines/fake_server.py)."""

if __name__ == "__main__":
    from fake_server import main

    main("vllm")
