# The demo's context file: written for DAMNIT (it imports damnit_ctx) and run
# unchanged by runstream. The data are EXtra-data's mock FXE runs (two XGMs and a
# camera, 400 trains) filled with seeded, plausible values by mockdata.py: SASE
# pulse energies of a few hundred uJ, a beam spot on the camera.
import numpy as np
import plotly.graph_objects as go
from damnit_ctx import Cell, Group, Variable

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"
CAMERA = "FXE_XAD_GEC/CAM/CAMERA:daqOutput"


@Group(tags="xgm")
class XGMGroup:
    """One XGM: the same variables for every instance, named after it."""

    source: str

    @Variable(title="Pulse energy", summary="mean", units="uJ")
    def pulse_energy(self, run):
        """Mean energy of the pulses of each train (empty pulse slots left out)."""
        energies = run[self.source + ":output", "data.intensityTD"].ndarray()
        pulses = energies > 0
        return np.where(pulses, energies, 0).sum(axis=1) / np.maximum(pulses.sum(axis=1), 1)

    @Variable(title="Beam x", summary="mean", units="mm")
    def beam_x(self, run):
        return run[self.source, "beamPosition.ixPos"].ndarray()


sa1 = XGMGroup(title="XGM SA1", source=XGM)
spb = XGMGroup(title="XGM SPB", source="SPB_XTD9_XGM/DOOCS/MAIN")


@Variable(title="XGM/Transmission SA1 to SPB")
def transmission(run, sa1_energy: "var#sa1.pulse_energy", spb_energy: "var#spb.pulse_energy"):
    """Variables of group instances are used by their dotted names."""
    return float(np.mean(spb_energy) / np.mean(sa1_energy))


@Variable(title="XGM/Pulse energy histogram")
def energy_histogram(run, energy: "var#sa1.pulse_energy"):
    """A plotly figure: stored as JSON, its thumbnail rendered by kaleido."""
    figure = go.Figure(go.Histogram(x=energy, nbinsx=40))
    figure.update_layout(xaxis_title="pulse energy [uJ]", yaxis_title="trains")
    return figure


@Variable(title="XGM/Intensity", summary="mean", units="uJ", tags=["xgm"])
def xgm_intensity(run):
    """Pulse energy of the first pulse in each train."""
    return run[XGM + ":output", "data.intensityTD"].ndarray()[:, 0]


@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)


@Variable(title="XGM/Energy per train", units="uJ")
def energy_per_train(run, intensity: "var#xgm_intensity", trains: "var#n_trains"):
    """A dependency chain: uses two other variables."""
    return float(np.sum(intensity)) / trains


@Variable(title="Camera/Image")
def camera_image(run):
    """Mean of the first 20 frames: a 2-D array, shown as a thumbnail."""
    return run[CAMERA, "data.image.pixels"].ndarray()[:20].mean(axis=0)


@Variable(title="Run label")
def label(run, number: "meta#run_number", proposal: "meta#proposal"):
    return f"p{proposal} r{number}"


@Variable(title="Broken")
def broken(run):
    """Fails on purpose: its error is recorded, the others go on."""
    return 1 / 0


@Variable(title="Camera/Peak", data="proc")
def camera_peak(run, image: "var#camera_image"):
    """Evaluated when calibration is done (proc data)."""
    return Cell(float(np.max(image)), bold=True)


@Variable(title="Camera/Column profile", cluster=True)
def column_profile(run, image: "var#camera_image"):
    """A 'heavy' variable: runs as a job through the slurm-gateway (local backend in the demo)."""
    return image.mean(axis=0)
