"""Loading: HF folders and GGUF files (dequantized) reach the same runtime; bad input fails clearly."""

import json

import numpy as np
import pytest
import torch
from tiny import byte_tokenizer, tiny_config, tiny_hf_model

from specrouter.api import SpecRouter, parse_chain
from specrouter.model.loader import load_model, resolve
from specrouter.sampling import SamplingParams


def write_gguf(hf_model, path, arch="llama", qtype="F32"):
    """Write a tiny HF model as llama.cpp would: GGUF names, q/k rows permuted for llama."""
    import gguf

    cfg = hf_model.config
    tok = byte_tokenizer()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else 10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda x: x[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * 256 + [3] * (len(tokens) - 256))
    w.add_token_merges([])
    w.add_token_scores([0.0] * len(tokens))
    w.add_eos_token_id(258)
    w.add_bos_token_id(256)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}

    def permute(x, n_head):
        return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    for name, t in hf_model.state_dict().items():
        x = t.float().numpy()
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, i, *rest = name.split(".")
            kind, leaf = ".".join(rest[:-1]), rest[-1]
            gname = f"blk.{i}.{names[kind]}.{leaf}"
            if arch == "llama" and kind in ("self_attn.q_proj", "self_attn.k_proj"):
                x = permute(x, cfg.num_attention_heads if "q_proj" in kind else cfg.num_key_value_heads)
        if qtype == "Q8_0" and x.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_and_hf_folder_give_the_same_logits(tmp_path, tiny_dir, arch):
    hf = tiny_hf_model(tiny_config(arch), seed=11)
    gguf_path = write_gguf(hf, tmp_path / f"tiny-{arch}.gguf", arch=arch)
    lm = load_model(str(gguf_path), dtype="fp32", progress=False)
    tok = torch.randint(0, 259, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(tok).logits
    assert (lm.model(tok, lm.model.new_cache(1, 32)) - ref).abs().max() <= 1e-3
    assert lm.tokenizer.encode("hi there") == byte_tokenizer().encode("hi there", add_special_tokens=False)
    # the second load reuses the prepared folder
    assert resolve(str(gguf_path), progress=False)[1] == lm.folder


def test_quantized_gguf_is_dequantized(tmp_path):
    hf = tiny_hf_model(tiny_config("llama"), seed=12)
    lm = load_model(str(write_gguf(hf, tmp_path / "q8.gguf", qtype="Q8_0")), dtype="fp32", progress=False)
    tok = torch.randint(0, 259, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tok).logits
    out = lm.model(tok, lm.model.new_cache(1, 32))
    assert (out - ref).abs().max() < 0.2 * ref.abs().max()  # Q8_0 error, not garbage
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown model"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "x.bin").write_bytes(b"123")
    with pytest.raises(ValueError, match="gguf"):
        load_model(str(tmp_path / "x.bin"))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type"):
        load_model(str(tmp_path / "m"))


def test_vocab_mismatch_names_both_models(tiny_dir):
    with pytest.raises(ValueError, match="vocabulary mismatch.*othervocab|othervocab.*vocabulary mismatch"):
        SpecRouter.from_chain(f"{tiny_dir / 'othervocab'}>{tiny_dir / 'target'}", dtype="fp32", progress=False)


def test_prompt_longer_than_context_and_bad_chains(tiny_dir):
    sr = SpecRouter.from_chain(f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}", dtype="fp32", progress=False,
                               max_seq_len=64)
    with pytest.raises(ValueError, match="context"):
        sr.generate(["x" * 200], SamplingParams(max_new_tokens=4), chat=False)
    out = sr.generate(["hello"], SamplingParams(max_new_tokens=4), chat=False)  # still usable afterwards
    assert len(out[0].tokens) == 4
    for bad in ("", "a>>b", "1.5b>ngram", "ngram", "a>ngram>b"):
        with pytest.raises(ValueError):
            parse_chain(bad)
