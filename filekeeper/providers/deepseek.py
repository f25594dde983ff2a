"""DeepSeek: an OpenAI-shaped Files API, so one profile over the OpenAI family."""

from __future__ import annotations

from ..profiles import MIB, Limits, Profile, words
from .openai import OpenAIShaped

_IMAGES = words("jpg jpeg png gif webp")
_DOCUMENTS = words("pdf doc docx ppt pptx")
_TEXT = words("txt md markdown csv tsv json jsonl xml html htm log xls xlsx epub mobi")


class DeepSeek(OpenAIShaped):
    profile = Profile(
        name="deepseek",
        key_env="DEEPSEEK_API_KEY",
        base_url_env="DEEPSEEK_BASE_URL",
        default_base_url="https://api.deepseek.com",
        default_purpose="user_data",
        limits=Limits(
            max_files=None,  # no count or storage quota is documented
            max_total_bytes=None,
            max_file_bytes=100 * MIB,
            retention_days=180,
            # Per kind of file: images 64 MiB, documents 100 MiB, text, sheets and e-books 32 MiB.
            by_format={**dict.fromkeys(_IMAGES, 64 * MIB), **dict.fromkeys(_DOCUMENTS, 100 * MIB)}
            | dict.fromkeys(_TEXT, 32 * MIB),
        ),
        purposes=words("user_data text_recognition rich_layout_recognition"),
    )
    page_limit = 1000  # its maximum (and its default)
    expires_after_range = (3600, 2_592_000)  # expires_after[anchor|seconds], as OpenAI spells it
