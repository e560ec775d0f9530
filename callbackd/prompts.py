"""The recordings the engine plays: prompts per language, a DID's own prompt, ringback."""

import wave
from pathlib import Path

from callbackd.machine import Prompt

RINGBACK = "ringback.wav"


class PromptError(ValueError):
    """A prompt the engine needs is missing or unreadable."""


def wav_seconds(path: Path) -> float:
    try:
        with wave.open(str(path), "rb") as wav:
            return wav.getnframes() / wav.getframerate()
    except (OSError, wave.Error, EOFError) as exc:
        raise PromptError(f"{path}: {exc}") from None


class Prompts:
    """Files under the prompts directory the callbackd role fills at deploy.

    Layout: `<dir>/<language>/<prompt>.wav`, `<dir>/did/<did digits>.wav` (a
    DID's own "enter the number" prompt, from the inventory), `<dir>/ringback.wav`.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.ringback = self.directory / RINGBACK
        self._seconds: dict[Path, float] = {}

    def path(self, did: str, language: str, name: str) -> Path:
        if name == Prompt.ENTER_NUMBER:
            own = self.directory / "did" / f"{did.lstrip('+')}.wav"
            if own.is_file():
                return own
        return self.directory / language / f"{name}.wav"

    def seconds(self, did: str, language: str) -> dict[str, float]:
        """How long each prompt of the DID plays: the machine times its digits from that."""
        return {name: self._length(self.path(did, language, name)) for name in Prompt}

    def check(self, languages: set[str]) -> None:
        """Fail at start, naming the file, rather than on the first call."""
        for language in languages:
            for name in Prompt:
                self._length(self.directory / language / f"{name}.wav")
        self._length(self.ringback)

    def _length(self, path: Path) -> float:
        if path not in self._seconds:
            self._seconds[path] = wav_seconds(path)
        return self._seconds[path]
