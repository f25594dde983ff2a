"""Z.AI / GLM."""

from __future__ import annotations

from ..errors import FileNotFoundAtProvider, ProviderError
from .base import Provider, RemoteFile


class ZAI(Provider):
    name = "zai"
    page_limit = 100  # the API refuses more

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
