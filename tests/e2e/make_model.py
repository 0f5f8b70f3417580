"""Build the end-to-end tier's tiny model and two LoRA adapters, locally (no hub).

Run by the vLLM venv's python:  python make_model.py OUT_DIR
Writes OUT_DIR/model (a 2-layer Llama with a small byte-level BPE tokenizer) and
OUT_DIR/adapters/{a,b} (rank-8 LoRA on q_proj/v_proj, different seeds, so greedy
outputs differ).  head_dim must be >= 32 on vLLM's CPU backend (vllm-cpu.md).
"""

import os
import sys


def main(out: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    model_dir = os.path.join(out, "model")
    corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "Patio is a sidecar for inference engines.",
        "Hello world, this is a tiny model for tests.",
        "Adapters change what the model says next.",
        "One two three four five six seven eight nine ten.",
    ] * 20
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    fast.save_pretrained(model_dir)

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        vocab_size=len(fast),
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)

    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        base = LlamaForCausalLM.from_pretrained(model_dir)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(base, lora).save_pretrained(os.path.join(out, "adapters", name))
    print(f"model and adapters written under {out}")


if __name__ == "__main__":
    main(sys.argv[1])
