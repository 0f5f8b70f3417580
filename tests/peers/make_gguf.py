"""A tiny GGUF model and two LoRA adapters for llama.cpp's llama-server, made locally (no hub).

Run by the llama.cpp venv's python (it has the ``gguf`` package):  python make_gguf.py OUT_DIR
Writes OUT_DIR/tiny.gguf (a 2-block Llama, 64-wide, byte-level SentencePiece vocabulary: every
text tokenizes) and OUT_DIR/adapters/{sql-lora,chat-lora}.gguf (rank-4 LoRA on attn_q/attn_v).
Weights are random with fixed seeds: the server loads and generates; what it says is noise.
"""

import os
import sys


def main(out: str) -> None:
    import gguf
    import numpy as np

    rng = np.random.default_rng(7)
    n_embd, n_ff, n_head, n_blocks, n_ctx = 64, 128, 4, 2, 512
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁the", "▁a", "▁is", "▁fox", "▁dog", "▁hello", "▁world", "▁one", "▁two", "▁three"]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    n_vocab = len(tokens)

    def weight(*shape: int) -> "np.ndarray":
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    os.makedirs(os.path.join(out, "adapters"), exist_ok=True)
    writer = gguf.GGUFWriter(os.path.join(out, "tiny.gguf"), "llama")
    writer.add_name("patio-tiny")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_blocks)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    # numpy shapes are (out, in): GGUF stores them reversed, as ggml's ne.
    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", weight(n_vocab, n_embd))
    for i in range(n_blocks):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    _write(writer)

    for seed, name in ((11, "sql-lora"), (12, "chat-lora")):
        rng = np.random.default_rng(seed)
        adapter = gguf.GGUFWriter(os.path.join(out, "adapters", f"{name}.gguf"), "llama")
        adapter.add_string("general.type", "adapter")
        adapter.add_string("adapter.type", "lora")
        adapter.add_float32("adapter.lora.alpha", 8.0)
        rank = 4
        for i in range(n_blocks):
            for target in ("attn_q", "attn_v"):
                adapter.add_tensor(f"blk.{i}.{target}.weight.lora_a", weight(rank, n_embd))
                adapter.add_tensor(f"blk.{i}.{target}.weight.lora_b", weight(n_embd, rank))
        _write(adapter)


def _write(writer: "object") -> None:
    writer.write_header_to_file()  # type: ignore[attr-defined]
    writer.write_kv_data_to_file()  # type: ignore[attr-defined]
    writer.write_tensors_to_file()  # type: ignore[attr-defined]
    writer.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1])
