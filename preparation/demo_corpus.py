"""The built-in demo corpus: procedurally generated VoxCeleb-shaped speech, trial list, MUSAN and RIR look-alikes.

Every speaker has a stable voice (pitch and its range, vocal-tract length, idiosyncratic vowel formants, glottal
tilt, breathiness, speaking rate, sibilant colour) and every session varies around it (microphone band and
colouring, level, background noise, mood pitch shift, tempo). Utterances are random syllable sequences from a
source-filter synthesiser. Everything is a pure function of the seed, so two runs give identical files.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy import signal
from tqdm import tqdm

from runtime import atomic_files
from runtime.atomic_files import atomic_write
from runtime.errors import ConfigError

SAMPLE_RATE = 16000
MARKER = "DEMO_COMPLETE.json"
CORPUS_VERSION = 1
# Average adult vowel formants F1, F2, F3 in Hz (Peterson & Barney style), scaled per speaker.
VOWEL_FORMANTS = np.array([[280, 2250, 2890], [400, 1920, 2560], [550, 1770, 2490], [730, 1090, 2440],
                           [570, 840, 2410], [440, 1020, 2240], [300, 870, 2240], [520, 1190, 2390]], float)
FORMANT_BANDWIDTHS = np.array([70.0, 100.0, 140.0, 220.0, 300.0])
# Kinds of seeded random streams, so each file's stream is independent of generation order.
VOICE, SESSION, UTTERANCE, TRIALS, NOISE, BABBLE, MUSIC, ROOM = range(8)


@dataclass(frozen=True)
class DemoSpec:
    """Corpus size; the defaults are the demo recipe's corpus."""

    train_speakers: int = 200
    test_speakers: int = 40
    sessions: int = 4
    utterances: int = 3
    trials: int = 4000
    min_seconds: float = 2.5
    max_seconds: float = 4.5
    augment_items: int = 8


@dataclass
class Voice:
    """A speaker's stable identity."""

    f0: float
    f0_range: float
    formant_scale: float
    vowel_formants: np.ndarray
    tilt: float
    breath: float
    rate: float
    sibilant_hz: float
    timbre_hz: float


@dataclass
class Session:
    """What changes between recordings of one speaker: channel, level, noise, mood."""

    channel_sos: np.ndarray
    noise_sos: np.ndarray
    level_db: float
    snr_db: float
    f0_shift: float
    tempo: float


def stream(seed: int, *key: int) -> np.random.Generator:
    """An independent random generator for one item, keyed by integers."""
    return np.random.default_rng([seed, CORPUS_VERSION, *key])


def draw_voice(rng: np.random.Generator) -> Voice:
    """Draw a speaker identity."""
    f0 = float(np.exp(rng.uniform(np.log(75), np.log(300))))
    scale = float((f0 / 140.0) ** 0.15 * np.exp(rng.normal(0, 0.08)))
    vowels = VOWEL_FORMANTS * scale * np.exp(rng.normal(0, 0.10, VOWEL_FORMANTS.shape))
    return Voice(f0=f0, f0_range=rng.uniform(0.3, 1.0), formant_scale=scale, vowel_formants=vowels,
                 tilt=rng.uniform(0.55, 0.95), breath=rng.uniform(0.0, 0.35), rate=rng.uniform(3.0, 6.0),
                 sibilant_hz=rng.uniform(3000, 6500), timbre_hz=rng.uniform(2600, 4200) * scale)


def peaking_sos(freq: float, gain_db: float, q: float) -> np.ndarray:
    """One peaking-equaliser biquad (audio EQ cookbook) as an sos row."""
    amp, w0 = 10 ** (gain_db / 40), 2 * np.pi * freq / SAMPLE_RATE
    alpha = np.sin(w0) / (2 * q)
    b = [1 + alpha * amp, -2 * np.cos(w0), 1 - alpha * amp]
    a = [1 + alpha / amp, -2 * np.cos(w0), 1 - alpha / amp]
    return np.concatenate([b, a]) / a[0]


def draw_session(rng: np.random.Generator) -> Session:
    """Draw a recording session: microphone band and colouring, level, background noise, mood."""
    low, high = rng.uniform(60, 350), rng.uniform(3200, 7600)
    band = signal.butter(2, [low, high], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    eq = [peaking_sos(rng.uniform(200, 5000), rng.uniform(-12, 12), rng.uniform(0.7, 2.5)) for _ in range(3)]
    noise_pole = rng.uniform(-0.5, 0.9)
    noise = np.array([[1.0, 0, 0, 1.0, -noise_pole, 0]])
    return Session(channel_sos=np.vstack([band, *eq]), noise_sos=noise, level_db=rng.uniform(-32, -16),
                   snr_db=rng.uniform(20, 40), f0_shift=rng.normal(0, 0.3), tempo=rng.uniform(0.85, 1.15))


def resonator_sos(freqs: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """A cascade of unity-DC-gain two-pole resonators as sos rows."""
    radius = np.exp(-np.pi * bandwidths / SAMPLE_RATE)
    a1, a2 = -2 * radius * np.cos(2 * np.pi * freqs / SAMPLE_RATE), radius ** 2
    gain = 1 + a1 + a2
    zeros = np.zeros_like(gain)
    return np.stack([gain, zeros, zeros, np.ones_like(gain), a1, a2], axis=1)


def syllable_plan(voice: Voice, session: Session, seconds: float, rng: np.random.Generator) -> list[tuple]:
    """Events (kind, start, end, detail) of words made of optional fricative onsets and vowels."""
    events, t = [], rng.uniform(0.05, 0.3)
    while t < seconds - 0.4:
        for _ in range(rng.integers(1, 4)):
            if rng.random() < 0.6:
                length = rng.uniform(0.04, 0.11) / session.tempo
                events.append(("fricative", t, t + length, voice.sibilant_hz * rng.uniform(0.75, 1.25)))
                t += length
            length = rng.uniform(0.6, 1.4) / voice.rate / session.tempo
            events.append(("vowel", t, min(t + length, seconds - 0.05), int(rng.integers(len(VOWEL_FORMANTS)))))
            t += length
        t += rng.uniform(0.05, 0.35)
    return events


def glottal_source(voice: Voice, session: Session, n: int, rng: np.random.Generator) -> np.ndarray:
    """Voiced excitation with a wandering, declining pitch contour, jitter, tilt and breath noise."""
    knots = np.arange(0, n + 4000, 4000)
    semitones = rng.normal(0, voice.f0_range, len(knots)) - 2.0 * knots / max(n, 1) + session.f0_shift
    contour = np.interp(np.arange(n), knots, semitones)
    jitter = np.interp(np.arange(n), np.arange(0, n + 160, 160), rng.normal(0, 0.015, (n + 159) // 160 + 1))
    f0 = voice.f0 * 2 ** (contour / 12) * (1 + jitter)
    phase = np.cumsum(f0 / SAMPLE_RATE)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    width = max(int(0.4 * SAMPLE_RATE / voice.f0), 4)
    flow = np.convolve(pulses, np.hanning(width), mode="same")
    source = signal.lfilter([1.0 - voice.tilt], [1.0, -voice.tilt], np.diff(flow, prepend=0.0))
    source /= np.std(source) + 1e-9
    return source + voice.breath * rng.standard_normal(n)


def synth_utterance(voice: Voice, session: Session, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One utterance as float32 samples in [-1, 1]."""
    n = int(seconds * SAMPLE_RATE)
    source, out = glottal_source(voice, session, n, rng), np.zeros(n)
    ring = int(0.03 * SAMPLE_RATE)
    for kind, start, end, detail in syllable_plan(voice, session, seconds, rng):
        a, b = int(start * SAMPLE_RATE), min(int(end * SAMPLE_RATE), n)
        if b - a < 32:
            continue
        ramp = np.minimum(1.0, np.minimum(np.arange(b - a), np.arange(b - a)[::-1]) / 160.0)
        if kind == "vowel":
            freqs = np.concatenate([voice.vowel_formants[detail], [3400 * voice.formant_scale, voice.timbre_hz]])
            segment = np.concatenate([source[a:b] * ramp, np.zeros(ring)])
            shaped = signal.sosfilt(resonator_sos(freqs, FORMANT_BANDWIDTHS), segment)
            shaped *= rng.uniform(0.6, 1.2) / (np.std(shaped[:b - a]) + 1e-9)
        else:
            band = resonator_sos(np.array([detail, min(1.3 * detail, 7500)]), np.array([0.4 * detail, 0.4 * detail]))
            shaped = signal.sosfilt(band, rng.standard_normal(b - a) * ramp)
            shaped *= 0.25 / (np.std(shaped) + 1e-9)
        stop = min(n, a + len(shaped))
        out[a:stop] += shaped[:stop - a]
    return apply_session(out, session, rng)


def apply_session(speech: np.ndarray, session: Session, rng: np.random.Generator) -> np.ndarray:
    """Microphone colouring, recording level and background noise at the session's SNR."""
    speech = signal.sosfilt(session.channel_sos, speech)
    speech *= 10 ** (session.level_db / 20) / (np.sqrt(np.mean(speech ** 2)) + 1e-9)
    noise = signal.sosfilt(session.noise_sos, rng.standard_normal(len(speech)))
    noise *= np.sqrt(np.mean(speech ** 2)) * 10 ** (-session.snr_db / 20) / (np.std(noise) + 1e-9)
    return np.clip(speech + noise, -0.99, 0.99).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray) -> None:
    """Write 16-bit 16 kHz wav through a temporary name, so a file that exists is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as temporary:
        soundfile.write(temporary, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def speaker_id(index: int, spec: DemoSpec) -> str:
    """VoxCeleb-like speaker name: id0NNNN for training speakers, id1NNNN for test speakers."""
    return f"id0{index:04d}" if index < spec.train_speakers else f"id1{index - spec.train_speakers:04d}"


def session_id(seed: int, speaker: int, session: int) -> str:
    """An 11-character YouTube-like video id, fixed by the seed."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    return "".join(stream(seed, SESSION, speaker, session, 1).choice(letters, 11))


def render_speaker(root: Path, seed: int, spec: DemoSpec, speaker: int) -> list[tuple[int, str]]:
    """Write every utterance of one speaker; returns (session, relative path) pairs."""
    voice, written = draw_voice(stream(seed, VOICE, speaker)), []
    for session in range(spec.sessions):
        conditions = draw_session(stream(seed, SESSION, speaker, session))
        folder = f"{speaker_id(speaker, spec)}/{session_id(seed, speaker, session)}"
        for utterance in range(1, spec.utterances + 1):
            rng = stream(seed, UTTERANCE, speaker, session, utterance)
            seconds = rng.uniform(spec.min_seconds, spec.max_seconds)
            relative = f"{folder}/{utterance:05d}.wav"
            write_wav(root / "wav" / relative, synth_utterance(voice, conditions, seconds, rng))
            written.append((session, relative))
    return written


def trial_lines(seed: int, spec: DemoSpec, test_files: dict[int, list[tuple[int, str]]]) -> list[str]:
    """veri_test.txt lines: half target trials across sessions, half non-target trials, shuffled."""
    rng = stream(seed, TRIALS)
    targets = [(a[1], b[1]) for files in test_files.values() for i, a in enumerate(files)
               for b in files[i + 1:] if a[0] != b[0]]
    chosen = rng.permutation(len(targets))[:spec.trials // 2]
    lines = [f"1 {targets[i][0]} {targets[i][1]}" for i in chosen]
    speakers, seen = sorted(test_files), set()
    while len(lines) < 2 * len(chosen):
        first, second = rng.choice(len(speakers), 2, replace=False)
        a = test_files[speakers[first]][rng.integers(len(test_files[speakers[first]]))][1]
        b = test_files[speakers[second]][rng.integers(len(test_files[speakers[second]]))][1]
        if (a, b) not in seen:
            seen.add((a, b))
            lines.append(f"0 {a} {b}")
    return [lines[i] + "\n" for i in rng.permutation(len(lines))]


def coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Background noise: coloured noise, mains hum or clicks, slowly modulated."""
    kind = rng.integers(3)
    if kind == 0:
        pole = rng.uniform(-0.5, 0.99)
        wave = signal.lfilter([1.0], [1.0, -pole], rng.standard_normal(n))
    elif kind == 1:
        t = np.arange(n) / SAMPLE_RATE
        hum = rng.choice([50.0, 60.0])
        wave = sum(np.sin(2 * np.pi * hum * k * t) / k for k in range(1, 6)) + 0.3 * rng.standard_normal(n)
    else:
        wave = signal.lfilter([1.0], [1.0, -0.9], (rng.random(n) < 0.002) * rng.standard_normal(n))
    wave *= 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * np.arange(n) / SAMPLE_RATE)
    return wave


def music(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tonal music: melodies of harmonic notes on a random scale over a beat."""
    out, t = np.zeros(n), 0
    root_hz, scale = rng.uniform(110, 330), np.array([0, 2, 4, 5, 7, 9, 11, 12])
    while t < n:
        length = int(rng.uniform(0.12, 0.6) * SAMPLE_RATE)
        times = np.arange(length) / SAMPLE_RATE
        pitch = root_hz * 2 ** (rng.choice(scale) / 12)
        note = sum(np.sin(2 * np.pi * pitch * k * times) * 0.6 ** k for k in range(1, 6))
        note *= np.exp(-times * rng.uniform(2, 8))
        note[:64] += rng.standard_normal(64) * rng.uniform(0, 2)
        out[t:t + length] += note[:n - t]
        t += length
    return out


def room_response(rng: np.random.Generator, rt60: float) -> np.ndarray:
    """A simulated room impulse response: direct path, early reflections and an exponential tail."""
    n = int(1.2 * rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    delay = int(rng.uniform(0.001, 0.006) * SAMPLE_RATE)
    rir[:delay] = 0
    rir[delay] = 1.0
    for _ in range(6):
        rir[delay + int(rng.uniform(0.002, 0.03) * SAMPLE_RATE)] += rng.uniform(-0.6, 0.6)
    return rir / np.max(np.abs(rir))


def render_augmentation(root: Path, seed: int, items: int) -> int:
    """MUSAN-shaped noise/speech/music 5 s chunks and simulated RIRs; returns the file count."""
    n, count = 5 * SAMPLE_RATE, 0
    neutral = Session(channel_sos=np.array([[1.0, 0, 0, 1.0, 0, 0]]), noise_sos=np.array([[1.0, 0, 0, 1.0, 0, 0]]),
                      level_db=-20, snr_db=60, f0_shift=0, tempo=1)
    sources = [("noise", ["free-sound", "sound-bible"], NOISE), ("speech", ["librivox", "us-gov"], BABBLE),
               ("music", ["fma", "jamendo"], MUSIC)]
    for category, subsets, kind in sources:
        for item in range(items):
            subset = subsets[item % 2]
            for chunk in (0, 3):
                rng = stream(seed, kind, item, chunk)
                if category == "speech":
                    wave = synth_utterance(draw_voice(stream(seed, kind, item)), neutral, 5.0, rng)
                else:
                    wave = coloured_noise(rng, n) if category == "noise" else music(rng, n)
                    wave = 0.1 * wave / (np.std(wave) + 1e-9)
                stem = f"{category}-{subset}-{item:04d}"
                write_wav(root / "musan_split" / category / subset / stem / f"{chunk:05d}.wav",
                          np.clip(wave, -0.99, 0.99).astype(np.float32))
                count += 1
    for size, rt60s in (("smallroom", (0.15, 0.45)), ("mediumroom", (0.35, 0.8))):
        for room in range(1, 5):
            for index in range(1, 4):
                rng = stream(seed, ROOM, len(size), room, index)
                name = f"Room{room:03d}"
                write_wav(root / "RIRS_NOISES" / "simulated_rirs" / size / name / f"{name}-{index:05d}.wav",
                          room_response(rng, rng.uniform(*rt60s)).astype(np.float32))
                count += 1
    return count


def write_text(path: Path, lines: list[str]) -> None:
    """Write a text file through a temporary name."""
    atomic_files.write_text(path, "".join(lines))


def make_demo_corpus(root: str | Path, seed: int = 0, spec: DemoSpec = DemoSpec(), jobs: int | None = None,
                     quiet: bool = False) -> Path:
    """Generate the demo corpus under root unless a complete one with the same settings is there."""
    root = Path(root)
    settings = {"version": CORPUS_VERSION, "seed": seed, **asdict(spec)}
    marker = root / MARKER
    if marker.exists():
        found = json.loads(marker.read_text())
        if found == settings:
            print(f"Demo corpus already complete in {root} (delete {marker} to regenerate).")
            return root
        raise ConfigError(f"{root} holds a demo corpus made with other settings ({marker}: {found}); "
                         f"delete that folder or choose another --save_path.")
    if spec.train_speakers < 1 or spec.test_speakers < 2 or spec.sessions < 2:
        raise ConfigError("The demo corpus needs >= 1 training speaker, >= 2 test speakers and >= 2 sessions.")
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    speakers = range(spec.train_speakers + spec.test_speakers)
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count()) as pool:
        futures = [pool.submit(render_speaker, root, seed, spec, speaker) for speaker in speakers]
        files = {s: f.result() for s, f in tqdm(zip(speakers, futures), total=len(futures), desc="demo speakers",
                                                 unit="spk", disable=quiet)}
    train = [f"{speaker_id(s, spec)} {path}\n" for s in speakers[:spec.train_speakers] for _, path in files[s]]
    write_text(root / "train_list.txt", train)
    test_files = {s: files[s] for s in speakers[spec.train_speakers:]}
    trials = trial_lines(seed, spec, test_files)
    write_text(root / "veri_test.txt", trials)
    extra = render_augmentation(root, seed, spec.augment_items)
    write_text(marker, [json.dumps(settings, indent=1) + "\n"])
    print(f"Demo corpus ready in {root}: {len(train)} training files of {spec.train_speakers} speakers, "
          f"{len(trials)} trials over {spec.test_speakers} test speakers, {extra} noise/music/babble/RIR files "
          f"({time.perf_counter() - started:.0f} s).")
    return root
