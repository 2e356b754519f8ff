"""Hugging Face interop: GPT-2 (`GPT2LMHeadModel`) and BERT (`BertForMaskedLM`) weights in and out.

    files.py     reading a model folder (config.json, safetensors / .bin), writing one
    gpt2.py      GPT-2 <-> jaxformer config and weight names, both ways
    bert.py      BERT <-> jaxformer config and weight names, both ways
    convert.py   weights -> a filled jaxformer model (`from_hf`, `load_hf_params`) and back (`to_hf_gpt2/bert`)
    runs.py      `jaxformer import-hf` / `export-hf`: a model folder <-> a run directory, tokenizer included

The tokenizer of an imported model is `jaxformer.data.hf_tokenizer.HFTokenizer`.
"""

from jaxformer.hf.convert import ImportedModel, from_hf, load_hf_params, to_hf_bert, to_hf_gpt2
from jaxformer.hf.runs import export_run, import_run

__all__ = ["ImportedModel", "export_run", "from_hf", "import_run", "load_hf_params", "to_hf_bert", "to_hf_gpt2"]
