"""Synthetic 12-lead ECGs (10 s at 500 Hz, millivolts) and ECG reports.

The heart is modelled as one electrical dipole (the vectorcardiogram) whose direction and size
over a beat are sums of Gaussian waves: P (atria), septal, main and terminal QRS forces
(ventricular depolarisation) and an asymmetric T wave (repolarisation). Each lead records the
projection of the dipole onto its lead vector. Only leads I, II and V1-V6 are "recorded"
(with their own baseline wander, muscle noise and mains hum); III, aVR, aVL and aVF are
derived from I and II exactly as an ECG machine does, so Einthoven's law holds sample by
sample. Coordinates: x to the patient's left, y towards the feet, z anterior.

Findings act on rhythm (sinus bradycardia: slow rate; atrial fibrillation: irregular RR, no
P waves, fibrillatory waves) and on morphology (LVH: larger QRS, calibrated to a Sokolow-Lyon
index above 3.5 mV, strain at high severity; low QRS voltage: limb-lead QRS below 0.5 mV;
ST elevation: an injury current during the ST segment in one coronary territory).

The numbers a report prints (rate, intervals, axis, territory, ST height) come from the
seed-derived layout stream of :mod:`render_support`, so the tracing and its report agree.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from m3bind.cohort.language import pick, severity_band
from m3bind.cohort.render_support import checked_findings, independent_streams, layout_rng

FINDINGS: tuple[str, ...] = ("atrial fibrillation", "left ventricular hypertrophy",
                             "sinus bradycardia", "st elevation", "low qrs voltage")
NATIVE_FORMAT = "wfdb"

SAMPLING_RATE = 500        # Hz
DURATION_S = 10.0
LEAD_NAMES: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF",
                               "V1", "V2", "V3", "V4", "V5", "V6")
_LAYOUT_STREAM = 7         # this module's stream number for render_support.layout_rng
_N = int(SAMPLING_RATE * DURATION_S)

# Recorded lead directions. Precordial electrodes sit in the horizontal plane at these
# angles from the patient's left towards anterior; being close to the heart they see larger
# voltages (gain below).
_PRECORDIAL_ANGLES_DEG = (115.0, 90.0, 70.0, 45.0, 20.0, 0.0)
_PRECORDIAL_GAIN = 1.6
_TERRITORIES = {   # injury-current direction and the leads that show the ST elevation
    "anterior": ((0.2, -0.1, 1.0), "V1-V4"),
    "inferior": ((-0.15, 1.0, 0.1), "II, III and aVF"),
    "lateral": ((1.0, -0.35, 0.25), "I, aVL, V5 and V6"),
}
# Normal-heart force directions (x left, y inferior, z anterior) and sizes in mV.
_P_FORCE = (0.5, 0.8, 0.2)
_SEPTAL_FORCE = (-0.4, 0.2, 0.9)
_MAIN_FORCE = (0.75, 0.55, -0.35)
_TERMINAL_FORCE = (-0.5, -0.4, -0.6)
_T_FORCE = (0.65, 0.55, 0.15)
_SOKOLOW_LVH_MV = 3.5      # S(V1) + R(V5) above this meets the voltage criterion for LVH
_LOW_VOLTAGE_MV = 0.5      # every limb-lead QRS below this is "low QRS voltage"


@dataclass(frozen=True)
class _Layout:
    """What both the tracing and its report must agree on."""
    atrial_fibrillation: bool
    heart_rate: float          # mean ventricular rate, beats per minute
    pr_s: float                # PR interval (unused in atrial fibrillation)
    qrs_s: float               # QRS duration
    qtc_s: float               # heart-rate corrected QT (Bazett)
    axis_deg: float            # frontal QRS axis
    territory: str             # coronary territory of ST elevation (when present)
    st_mv: float               # ST elevation in the most affected lead (0 when absent)
    sokolow_mv: float          # S(V1) + R(V5) LVH target (0 when LVH is absent)
    limb_qrs_mv: float         # largest limb-lead QRS for low voltage (0 when absent)


def _draw_layout(findings: Mapping[str, float], rng: np.random.Generator) -> _Layout:
    # Every value is drawn whatever the findings, so adding a finding never shifts the others.
    normal_rate = rng.uniform(62.0, 96.0)
    brady_jitter = rng.uniform(0.0, 1.5)
    af_jitter = rng.uniform(-5.0, 5.0)
    pr = rng.uniform(0.13, 0.19)
    qrs = rng.uniform(0.08, 0.10)
    qtc = rng.uniform(0.39, 0.44)
    normal_axis = rng.uniform(-10.0, 80.0)
    lvh_axis = rng.uniform(-40.0, 30.0)
    territory = list(_TERRITORIES)[int(rng.integers(len(_TERRITORIES)))]

    brady = findings.get("sinus bradycardia", 0.0)
    af = findings.get("atrial fibrillation", 0.0)
    lvh = findings.get("left ventricular hypertrophy", 0.0)
    if af:
        # Bradycardia together with AF means a slow ventricular response.
        rate = 55.0 - 10.0 * brady + af_jitter if brady else 75.0 + 50.0 * af + af_jitter
    elif brady:
        rate = 58.5 - 18.0 * brady - brady_jitter      # always below 60 bpm
    else:
        rate = normal_rate
    st_elevation = findings.get("st elevation", 0.0)
    low_voltage = findings.get("low qrs voltage", 0.0)
    return _Layout(
        atrial_fibrillation=bool(af), heart_rate=float(rate), pr_s=float(pr),
        qrs_s=float(qrs + 0.015 * lvh), qtc_s=float(qtc),
        axis_deg=float(lvh_axis if lvh else normal_axis), territory=territory,
        st_mv=0.12 + 0.28 * st_elevation if st_elevation else 0.0,
        sokolow_mv=3.6 + 1.6 * lvh if lvh else 0.0,
        limb_qrs_mv=0.45 - 0.25 * low_voltage if low_voltage else 0.0)


# ----------------------------------------------------------------------------- geometry

def _unit(vector: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    return vector / np.linalg.norm(vector)


def _recorded_leads(rng: np.random.Generator) -> np.ndarray:
    """(8, 3) lead vectors of I, II, V1..V6 with per-patient electrode gain variation."""
    limb = np.array([[1.0, 0.0, 0.0], [0.5, np.sqrt(3) / 2, 0.0]])
    angles = np.deg2rad(_PRECORDIAL_ANGLES_DEG)
    chest = _PRECORDIAL_GAIN * np.column_stack([np.cos(angles), np.zeros(6), np.sin(angles)])
    return np.vstack([limb, chest]) * rng.uniform(0.9, 1.1, (8, 1))


def _twelve_leads(recorded: np.ndarray) -> np.ndarray:
    """Recorded rows (I, II, V1..V6) to the 12 standard leads, derived as a machine does."""
    lead_i, lead_ii = recorded[0], recorded[1]
    return np.stack([lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2,
                     lead_i - lead_ii / 2, lead_ii - lead_i / 2, *recorded[2:]])


def _rotation(frontal_rad: float, horizontal_rad: float) -> np.ndarray:
    """Rotate the heart in the frontal plane (about z) then the horizontal plane (about y)."""
    c, s = np.cos(frontal_rad), np.sin(frontal_rad)
    frontal = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    c, s = np.cos(horizontal_rad), np.sin(horizontal_rad)
    horizontal = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    return horizontal @ frontal


@dataclass(frozen=True)
class _Heart:
    """Per-beat wave forces (3-vectors in mV) and timing of one patient's heart."""
    p_force: np.ndarray
    qrs_forces: np.ndarray     # (3, 3): septal, main, terminal forces
    t_force: np.ndarray
    st_force: np.ndarray       # injury current during the ST segment (zeros when absent)
    qrs_s: float
    pr_s: float
    qtc_s: float


def _qrs_template(qrs_forces: np.ndarray, qrs_s: float, leads12: np.ndarray) -> np.ndarray:
    """Noise-free QRS complex of one beat in all 12 leads, (12, samples), for calibration."""
    t = np.arange(-0.1, 0.1, 1.0 / SAMPLING_RATE)
    waves = np.stack([np.exp(-0.5 * ((t - centre) / width) ** 2)
                      for centre, width in _qrs_timing(qrs_s)])
    return leads12 @ qrs_forces.T @ waves


def _qrs_timing(qrs_s: float) -> list[tuple[float, float]]:
    """(centre, width) in seconds relative to the R peak of the septal, main and terminal forces."""
    return [(-0.28 * qrs_s, 0.085 * qrs_s), (0.0, 0.12 * qrs_s), (0.28 * qrs_s, 0.1 * qrs_s)]


def _build_heart(findings: Mapping[str, float], layout: _Layout, leads: np.ndarray,
                 rng: np.random.Generator) -> _Heart:
    """The patient's wave forces: normal directions turned to the layout's axis, sized by body
    habitus, then calibrated against the voltage criteria and given the findings' ST-T changes."""
    leads12 = _twelve_leads(leads)
    base_axis = np.arctan2(_MAIN_FORCE[1], _MAIN_FORCE[0])
    rotation = _rotation(np.deg2rad(layout.axis_deg) - base_axis, rng.normal(0.0, 0.2))
    habitus = rng.uniform(0.75, 1.1)              # chest wall and lungs damp all voltages
    p_force = rotation @ _unit(_P_FORCE) * rng.uniform(0.1, 0.2) * habitus
    qrs_forces = np.stack([rotation @ _unit(_SEPTAL_FORCE) * 0.2,
                           rotation @ _unit(_MAIN_FORCE) * 1.35,
                           rotation @ _unit(_TERMINAL_FORCE) * 0.35]) * habitus
    t_force = rotation @ _unit(_T_FORCE) * rng.uniform(0.22, 0.38) * habitus
    qrs_gain, all_gain = _voltage_calibration(qrs_forces, layout, leads12)
    qrs_forces, p_force, t_force = qrs_forces * qrs_gain, p_force * all_gain, t_force * all_gain

    st_force = np.zeros(3)
    lvh = findings.get("left ventricular hypertrophy", 0.0)
    if lvh > 0.5:
        # Strain pattern: repolarisation turns away from the thick left ventricle.
        strain = min((lvh - 0.5) / 0.5, 1.0)
        main_direction = _unit(qrs_forces[1])
        t_force = (1.0 - strain) * t_force - strain * 0.3 * main_direction
        st_force = st_force - 0.08 * strain * main_direction
    if layout.st_mv:
        # Sized so that the most affected lead shows exactly the layout's elevation.
        direction = _unit(_TERRITORIES[layout.territory][0])
        st_force = st_force + direction * layout.st_mv / (leads12 @ direction).max()
    return _Heart(p_force=p_force, qrs_forces=qrs_forces, t_force=t_force, st_force=st_force,
                  qrs_s=layout.qrs_s, pr_s=layout.pr_s, qtc_s=layout.qtc_s)


def _voltage_calibration(qrs_forces: np.ndarray, layout: _Layout,
                         leads12: np.ndarray) -> tuple[float, float]:
    """Gains (for the QRS, for P and T) that make the QRS meet the layout's voltage criteria.

    Measured on a noise-free QRS template: LVH gets exactly the layout's Sokolow-Lyon index,
    low voltage exactly its largest limb-lead QRS (pericardial fluid damps P and T as well),
    and a normal heart is kept clear of both criteria, so labels and signal always agree.
    """
    template = _qrs_template(qrs_forces, layout.qrs_s, leads12)
    sokolow = -template[LEAD_NAMES.index("V1")].min() + template[LEAD_NAMES.index("V5")].max()
    limb_peak_to_peak = np.ptp(template[:6], axis=1).max()
    if layout.limb_qrs_mv:
        damping = layout.limb_qrs_mv / limb_peak_to_peak
        return damping, damping
    if layout.sokolow_mv:
        return layout.sokolow_mv / sokolow, 1.0
    return float(np.clip(1.0, 0.6 / limb_peak_to_peak, 3.2 / sokolow)), 1.0


# ----------------------------------------------------------------------------- rhythm

def _r_peaks(layout: _Layout, severity_af: float, rng: np.random.Generator) -> np.ndarray:
    """R-peak times in seconds covering the recording (starting before 0, ending after it)."""
    mean_rr = 60.0 / layout.heart_rate
    count = int(DURATION_S / mean_rr) + 4
    if layout.atrial_fibrillation:
        # Irregularly irregular: independent RR intervals, more variable with severity.
        spread = 0.18 + 0.12 * severity_af
        rr = np.exp(rng.normal(0.0, spread, count))
        rr = np.maximum(rr / rr.mean() * mean_rr, 0.28)
    else:
        # Sinus rhythm varies gently with breathing (respiratory sinus arrhythmia).
        breathing = rng.uniform(3.0, 5.0)
        phase = rng.uniform(0, 2 * np.pi)
        beats = np.arange(count) * mean_rr
        rr = mean_rr * (1.0 + 0.03 * np.sin(2 * np.pi * beats / breathing + phase)
                        + rng.normal(0.0, 0.008, count))
    return -rng.uniform(0.0, mean_rr) + np.cumsum(rr) - rr[0]


def _vectorcardiogram(heart: _Heart, r_peaks: np.ndarray, atrial_fibrillation: bool,
                      rng: np.random.Generator) -> np.ndarray:
    """(3, samples) dipole over the recording: each beat's waves added in a local window."""
    vcg = np.zeros((3, _N))
    time = np.arange(_N) / SAMPLING_RATE
    qrs_onset = -0.45 * heart.qrs_s
    for index, r_time in enumerate(r_peaks):
        lo = max(int((r_time - 0.4) * SAMPLING_RATE), 0)
        hi = min(int((r_time + 0.75) * SAMPLING_RATE), _N)
        if lo >= hi:
            continue
        t = time[lo:hi] - r_time
        previous_rr = r_peaks[index] - r_peaks[index - 1] if index else np.diff(r_peaks).mean()
        t_peak = qrs_onset + heart.qtc_s * np.sqrt(previous_rr) - 0.09   # QT shortens with rate
        t_wave = np.exp(-0.5 * ((t - t_peak) / np.where(t < t_peak, 0.05, 0.035)) ** 2)
        forces = [heart.t_force[:, None] * t_wave]
        for force, (centre, width) in zip(heart.qrs_forces, _qrs_timing(heart.qrs_s)):
            forces.append(force[:, None] * np.exp(-0.5 * ((t - centre) / width) ** 2))
        if not atrial_fibrillation:
            p_peak = qrs_onset - heart.pr_s + 0.05
            forces.append(heart.p_force[:, None] * np.exp(-0.5 * ((t - p_peak) / 0.022) ** 2))
        if heart.st_force.any():
            # The injury current flows from the end of the QRS (J point) until the T wave ends.
            # Smoothsteps, unlike Gaussian tails, are exactly zero outside that interval.
            j_point = qrs_onset + heart.qrs_s
            rise = _smoothstep((t - j_point) / 0.02)
            fall = 1.0 - _smoothstep((t - t_peak) / 0.1)
            forces.append(heart.st_force[:, None] * rise * fall)
        vcg[:, lo:hi] += np.sum(forces, axis=0)
    if atrial_fibrillation:
        vcg += _fibrillatory_waves(time, rng)
    return vcg


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth cubic in between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _fibrillatory_waves(time: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Chaotic atrial activity: a few 4-8 Hz oscillations with wandering amplitude."""
    direction = _unit((-0.3, 0.5, 0.8))          # seen best in V1 and the inferior leads
    signal = np.zeros_like(time)
    for _ in range(3):
        frequency = rng.uniform(4.5, 7.5)
        wobble = np.cumsum(rng.normal(0.0, 0.02, time.size))       # drifting phase
        envelope = 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * time + rng.uniform(0, 6))
        signal += envelope * np.sin(2 * np.pi * frequency * time + wobble)
    return direction[:, None] * signal * rng.uniform(0.015, 0.035)


def _recording_noise(rng: np.random.Generator) -> np.ndarray:
    """(8, samples) baseline wander, muscle noise and mains hum of the recorded leads."""
    time = np.arange(_N) / SAMPLING_RATE
    noise = np.zeros((8, _N))
    for _ in range(2):
        frequency = rng.uniform(0.05, 0.5, (8, 1))
        noise += rng.uniform(0.02, 0.12, (8, 1)) * np.sin(2 * np.pi * frequency * time
                                                          + rng.uniform(0, 2 * np.pi, (8, 1)))
    noise += rng.uniform(0.004, 0.02) * rng.standard_normal((8, _N))
    mains = rng.choice([50.0, 60.0])
    noise += rng.uniform(0.0, 0.012) * np.sin(2 * np.pi * mains * time + rng.uniform(0, 2 * np.pi))
    return noise


def render(findings: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """A (12, 5000) float32 12-lead ECG in mV (leads in :data:`LEAD_NAMES` order, 500 Hz, 10 s).

    ``findings`` maps labels of :data:`FINDINGS` to severities in (0, 1]; ``{}`` is normal.
    """
    findings = checked_findings(findings, FINDINGS, "ecg")
    layout = _draw_layout(findings, layout_rng(rng, _LAYOUT_STREAM))
    anatomy_rng, rhythm_rng, noise_rng = independent_streams(rng, 3)
    leads = _recorded_leads(anatomy_rng)
    heart = _build_heart(findings, layout, leads, anatomy_rng)
    r_peaks = _r_peaks(layout, findings.get("atrial fibrillation", 0.0), rhythm_rng)
    vcg = _vectorcardiogram(heart, r_peaks, layout.atrial_fibrillation, rhythm_rng)
    if findings.get("low qrs voltage", 0.0) > 0.75:
        vcg = _electrical_alternans(vcg, r_peaks)
    recorded = (leads @ vcg + _recording_noise(noise_rng)).astype(np.float32)
    # Derived from the float32 recordings so that III == II - I holds exactly.
    return _twelve_leads(recorded)


def _electrical_alternans(vcg: np.ndarray, r_peaks: np.ndarray) -> np.ndarray:
    """Every other beat smaller: the heart swinging in a large pericardial effusion."""
    time = np.arange(_N) / SAMPLING_RATE
    beat = np.searchsorted(r_peaks - 0.2, time) - 1     # index of the beat each sample belongs to
    return vcg * np.where(beat % 2 == 0, 1.0, 0.8)


# ----------------------------------------------------------------------------- report



def _mid_sentence(text: str) -> str:
    """``text`` with its first letter lowered, unless it starts with an abbreviation (LVH, AF)."""
    first_word = text.split(" ")[0].strip(",;")
    return text if first_word.isupper() else text[0].lower() + text[1:]


def _rhythm_statement(findings: Mapping[str, float], layout: _Layout, rate: int,
                      rng: np.random.Generator) -> str:
    """The rhythm line; the rate itself is printed by the caller."""
    if layout.atrial_fibrillation:
        response = ("slow" if rate < 60 else "rapid" if rate > 100 else "controlled")
        return pick(rng, (f"Atrial fibrillation with {response} ventricular response",
                           "AF, irregularly irregular rhythm without P waves",
                           f"Atrial fibrillation, {response} ventricular rate",
                           f"Irregularly irregular narrow-complex rhythm, no discernible P waves "
                           f"({response} ventricular response)"))
    if "sinus bradycardia" in findings:
        band = severity_band(findings["sinus bradycardia"])
        return pick(rng, {
            "mild": ("Mild sinus bradycardia", "Sinus bradycardia, borderline slow",
                    "Slow sinus rhythm (mild bradycardia)"),
            "moderate": ("Sinus bradycardia", "Slow sinus rhythm (bradycardia)"),
            "severe": ("Marked sinus bradycardia", "Severe sinus bradycardia",
                      "Markedly slow sinus rhythm"),
        }[band])
    return pick(rng, ("Sinus rhythm", "Normal sinus rhythm", "Regular sinus rhythm"))


def _finding_statements(findings: Mapping[str, float], layout: _Layout,
                        rng: np.random.Generator) -> list[str]:
    statements = []
    if "left ventricular hypertrophy" in findings:
        sokolow = f"{layout.sokolow_mv:.1f}"
        options = {
            "mild": ("Borderline voltage criteria for left ventricular hypertrophy",
                    "Minimal voltage criteria for LVH (Sokolow-Lyon {s} mV)",
                    "Mild left ventricular hypertrophy by voltage",
                    "Possible left ventricular hypertrophy, borderline voltage ({s} mV)"),
            "moderate": ("Left ventricular hypertrophy by voltage criteria",
                        "LVH (Sokolow-Lyon index {s} mV)",
                        "Increased QRS voltages consistent with LV hypertrophy",
                        "Left ventricular hypertrophy, Sokolow-Lyon {s} mV"),
            "severe": ("Marked left ventricular hypertrophy with repolarization abnormality",
                      "Severe LVH with secondary ST-T changes (strain), Sokolow-Lyon {s} mV",
                      "Marked LV hypertrophy with strain",
                      "Severe left ventricular hypertrophy with strain pattern"),
        }[severity_band(findings["left ventricular hypertrophy"])]
        if "low qrs voltage" in findings:
            # Pericardial fluid damps the voltages, so no Sokolow-Lyon value can be quoted.
            options = tuple(o for o in options if "{s}" not in o)
        # Cardiologists tie LVH to the chest imaging concept; these words are also what lets text
        # bridge the ECG corpus and the X-ray/CT corpora (as a shared clinical vocabulary does).
        correlate = pick(rng, ("", ", consistent with cardiomegaly", ", suggests cardiomegaly",
                               ", likely cardiomegaly", "; correlate with chest imaging for cardiomegaly"))
        statements.append(pick(rng, options).format(s=sokolow) + correlate)
    if "st elevation" in findings:
        leads = _TERRITORIES[layout.territory][1]
        millimetres = f"{10 * layout.st_mv:.0f}"
        statements.append(pick(rng, {
            "mild": ("Subtle ST elevation in {leads}", "Minimal {t} ST elevation ({mm} mm)",
                    "Borderline ST-segment elevation in {leads}, {t} leads"),
            "moderate": ("ST elevation in {leads}, consider {t} injury",
                        "{T} ST-segment elevation of {mm} mm",
                        "ST elevation {mm} mm in {leads}"),
            "severe": ("Marked ST elevation in {leads}, consider acute {t} infarction",
                      "Extensive {t} ST-segment elevation ({mm} mm) - acute STEMI",
                      "Severe ST elevation in the {t} leads ({leads})"),
        }[severity_band(findings["st elevation"])]).format(
            leads=leads, t=layout.territory, T=layout.territory.capitalize(), mm=millimetres))
    if "low qrs voltage" in findings:
        severity = findings["low qrs voltage"]
        text = pick(rng, {
            "mild": ("Borderline low QRS voltage in the limb leads", "Mild low voltage QRS",
                    "Slightly diminished QRS amplitudes in the limb leads",
                    "Mild low QRS voltage"),
            "moderate": ("Low QRS voltage", "Low voltage QRS in the limb leads",
                        "Diminished QRS amplitudes, consider pericardial effusion",
                        "Low QRS voltage in the limb leads"),
            "severe": ("Marked low QRS voltage, consider pericardial effusion",
                      "Severe diffusely low voltages", "Markedly reduced QRS amplitudes",
                      "Marked low QRS voltage in limb and precordial leads"),
        }[severity_band(severity)])
        if severity > 0.75:
            text += pick(rng, (" with electrical alternans", "; electrical alternans present"))
        statements.append(text)
    return statements


_NEGATIONS: dict[str, tuple[str, ...]] = {
    "atrial fibrillation": ("No atrial fibrillation.", "Regular rhythm with P waves present."),
    "left ventricular hypertrophy": ("No LVH by voltage criteria.",
                                     "No evidence of left ventricular hypertrophy."),
    "sinus bradycardia": ("Rate within normal limits.", "No bradycardia."),
    "st elevation": ("No ST elevation.", "No acute ST-T changes.",
                     "Without evidence of ST-segment elevation."),
    "low qrs voltage": ("Normal QRS voltages.", "No low voltage."),
}
_NORMAL_CONCLUSIONS = ("Normal ECG.", "Normal electrocardiogram.", "Within normal limits.",
                       "No acute abnormality.", "Normal tracing.")


def write_report(findings: Mapping[str, float], rng: np.random.Generator) -> str:
    """An ECG report for the tracing ``render`` makes from the same seed: machine-read style
    (measurements, then statements) or cardiologist style (rhythm, axis, intervals, impression).
    """
    findings = checked_findings(findings, FINDINGS, "ecg")
    layout = _draw_layout(findings, layout_rng(rng, _LAYOUT_STREAM))
    rate = round(layout.heart_rate)
    qt = round(1000 * layout.qtc_s * np.sqrt(60.0 / layout.heart_rate))
    qtc, qrs, pr = (round(1000 * v) for v in (layout.qtc_s, layout.qrs_s, layout.pr_s))
    axis = round(layout.axis_deg)
    rhythm = _rhythm_statement(findings, layout, rate, rng)
    statements = _finding_statements(findings, layout, rng)
    absent = [name for name in FINDINGS if name not in findings]
    rhythm_labels = ("atrial fibrillation", "sinus bradycardia")
    if any(label in findings for label in rhythm_labels):
        # The rhythm line already says what the rhythm is; do not negate the other rhythm.
        absent = [name for name in absent if name not in rhythm_labels]
    negations = [pick(rng, _NEGATIONS[str(name)])
                 for name in rng.permutation(absent)[:int(rng.integers(0, 3))]]
    if axis < -30:
        statements.append("Left axis deviation")
    conclusion = pick(rng, _NORMAL_CONCLUSIONS) if not findings else \
        pick(rng, ("Abnormal ECG.", "Abnormal electrocardiogram.", ""))

    if rng.random() < 0.5:   # machine read
        pr_text = "" if layout.atrial_fibrillation else f"PR {pr} ms, "
        header = pick(rng, (f"Vent. rate {rate} bpm. {pr_text}QRS {qrs} ms, QT/QTc {qt}/{qtc} ms, "
                             f"axis {axis}.",
                             f"HR {rate}; {pr_text}QRSd {qrs} ms; QTc {qtc} ms; "
                             f"QRS axis {axis} deg.",
                             ""))
        lines = [header, rhythm + ".", *(s + "." for s in statements), *negations, conclusion]
    else:                    # cardiologist read
        axis_words = "left axis deviation" if axis < -30 else "normal axis"
        body = f"Rhythm: {_mid_sentence(rhythm)} at {rate}/min. Axis: {axis_words}."
        if statements:
            body += " Findings: " + "; ".join(_mid_sentence(s) for s in statements) + "."
        lines = [body, *negations, ("Impression: " + conclusion) if conclusion else ""]
    return " ".join(line for line in lines if line)
