"""Checkpoints: the book's files, the project's safetensors and Hugging Face GPT-2, loaded (`load`), saved and
converted (`save`), with the name tables of other layouts (`names`, `hf`, `openai`), OpenAI's TensorFlow release
(`tf_bundle`) and its download (`download`)."""
