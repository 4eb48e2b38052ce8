"""The admin token: created once with 0600, re-read, refused when others can read it."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from plait.control.auth import (
    TOKEN_FILE,
    TokenError,
    check_token,
    load_or_create_token,
)


def test_the_token_is_created_private_and_read_back_afterwards(tmp_path: Path) -> None:
    data_dir = tmp_path / "control"
    token = load_or_create_token(data_dir)
    assert len(token) >= 43  # 32 random bytes, base64url
    path = data_dir / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(data_dir) == token
    assert [p.name for p in data_dir.iterdir()] == [TOKEN_FILE]  # no temporary file left


def test_racing_first_starts_agree_on_one_token(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: load_or_create_token(tmp_path), range(16)))
    assert len(tokens) == 1


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_token_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_token(tmp_path)
    os.chmod(tmp_path / TOKEN_FILE, mode)
    with pytest.raises(
        TokenError, match=f"accessible by group or others \\(mode 0{mode:o}\\).*chmod 600"
    ):
        load_or_create_token(tmp_path)


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / TOKEN_FILE
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(TokenError, match="empty"):
        load_or_create_token(tmp_path)


def test_check_token() -> None:
    assert check_token("s3cret", "s3cret")
    assert not check_token("s3cre", "s3cret")
    assert not check_token(None, "s3cret")
    assert not check_token("ünïcode", "s3cret")
