"""Which recording the engine plays: the DID's own prompt first, then its language's."""

import wave
from pathlib import Path

import pytest
import yaml

from callbackd.machine import Prompt
from callbackd.prompts import PromptError, Prompts
from vpbx.model import LANGUAGES


def write_wav(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\0\0" * int(8000 * seconds))


@pytest.fixture
def prompts(tmp_path):
    for name in Prompt:
        write_wav(tmp_path / "sk" / f"{name}.wav", 1.0)
    write_wav(tmp_path / "ringback.wav", 5.0)
    return Prompts(tmp_path)


def test_a_did_without_its_own_prompt_hears_its_language(prompts, tmp_path):
    assert prompts.path("+421233000111", "sk", Prompt.ENTER_NUMBER) == tmp_path / "sk" / "enter_number.wav"


def test_a_did_with_its_own_prompt_hears_it_for_enter_number_only(prompts, tmp_path):
    write_wav(tmp_path / "did" / "421233000111.wav", 2.5)
    assert prompts.path("+421233000111", "sk", Prompt.ENTER_NUMBER) == tmp_path / "did" / "421233000111.wav"
    assert prompts.path("+421233000111", "sk", Prompt.CLIENT_BUSY) == tmp_path / "sk" / "client_busy.wav"
    assert prompts.seconds("+421233000111", "sk")[Prompt.ENTER_NUMBER] == 2.5


def test_prompt_lengths_come_from_the_files(prompts):
    assert set(prompts.seconds("+421233000111", "sk").values()) == {1.0}


def test_a_missing_language_fails_at_start_naming_the_file(prompts, tmp_path):
    with pytest.raises(PromptError, match=str(tmp_path / "en")):
        prompts.check({"sk", "en"})


def test_the_role_speaks_every_prompt_in_every_language_at_deploy():
    defaults = Path(__file__).resolve().parents[2] / "roles" / "callbackd" / "defaults" / "main.yml"
    texts = yaml.safe_load(defaults.read_text())["callbackd_prompt_texts"]
    spoken = {(t["language"], t["name"]) for t in texts}
    assert spoken == {(language, str(name)) for language in LANGUAGES for name in Prompt}
