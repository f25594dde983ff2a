"""Z.AI / GLM."""

from __future__ import annotations

from ..errors import FileNotFoundAtProvider, ProviderError
from ..profiles import MB, Limits, Profile, words
from .base import Provider, RemoteFile


class ZAI(Provider):
    profile = Profile(
        name="zai",
        key_env="ZAI_API_KEY",
        base_url_env="ZAI_BASE_URL",
        default_base_url="https://api.z.ai/api/paas/v4",
        default_purpose="agent",
        limits=Limits(max_files=100, max_total_bytes=None, max_file_bytes=100 * MB, retention_days=180),
        purposes=words("agent file-extract batch code-interpreter voice-clone-input retrieval fine-tune"),
        formats=words("pdf doc docx xls xlsx ppt pptx txt md jpg jpeg png gif webp mp3 wav flac mp4 avi mov jsonl"),
    )
    page_limit = 100  # the API refuses more
    has_retrieve = False  # not in its SDK; retrieve() below falls back to a listing

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
        raise FileNotFoundAtProvider(f"no file {file_id}", provider=self.name, status=404)
