"""Z.AI / GLM."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ProviderError
from ..profiles import MB, Limits, Profile, PurposeLimits, words
from .base import RemoteFile
from .openai import OpenAIShaped

#: the purposes its list call takes (and requires: a list without one answers with nothing)
LISTED = ("agent", "batch", "file-extract", "code-interpreter")


class ZAI(OpenAIShaped):
    profile = Profile(
        name="zai",
        key_env="ZAI_API_KEY",
        base_url_env="ZAI_BASE_URL",
        default_base_url="https://api.z.ai/api/paas/v4",
        default_purpose="agent",
        # Counted per purpose. Agent files as the international docs say (the China docs: 1,000
        # files of 20 MB); the others as the China docs say.
        limits=Limits(
            max_files=None,
            max_total_bytes=None,
            max_file_bytes=100 * MB,
            retention_days=180,
            by_purpose={
                "agent": PurposeLimits(max_files=100, max_file_bytes=100 * MB),
                "batch": PurposeLimits(max_files=1000, max_file_bytes=100 * MB),
                "file-extract": PurposeLimits(max_files=100, max_file_bytes=50 * MB),
                "code-interpreter": PurposeLimits(max_files=100, max_file_bytes=20 * MB),
            },
        ),
        purposes=words("agent file-extract batch code-interpreter voice-clone-input retrieval fine-tune"),
        formats=words("pdf doc docx xls xlsx ppt pptx txt md jpg jpeg png gif webp mp3 wav flac mp4 avi mov jsonl"),
    )
    page_limit = 100  # the API refuses more
    retrieve_proves_absence = False  # not in its SDK; retrieve() below falls back to a listing
    retrieve_proves_presence = False

    def list_scopes(self) -> Iterable[str | None]:
        # Its list documents purpose as required, and without one answers with an empty list:
        # listing once per purpose is the only way to see everything.
        return LISTED

    def lists_purpose(self, purpose: str) -> bool:
        return purpose in LISTED

    def list_params(self, cursor: str | None, scope: str | None = None) -> dict[str, str | int]:
        params = super().list_params(cursor, scope)
        if scope:
            params["purpose"] = scope
        return params

    def retrieve(self, file_id: str) -> RemoteFile:
        # Z.AI's SDK has no retrieve; where the endpoint is missing, find the file in the listing.
        try:
            return super().retrieve(file_id)
        except ProviderError as e:
            if e.status not in (404, 405):
                raise
        for remote in self.list_files():
            if remote.id == file_id:
                return remote
        # Not proof of absence: the listing shows four purposes of seven, and the file may be of another.
        raise ProviderError(
            f"{file_id} is not in the listing of its {', '.join(LISTED)} files, and it has no retrieve to ask: "
            "cannot tell whether it exists",
            provider=self.name,
        )
