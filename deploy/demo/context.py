# The demo's context file: written for DAMNIT (it imports damnit_ctx) and run
# unchanged by runstream. The data are EXtra-data's mock FXE runs: two XGMs
# and a camera, 400 trains.
import numpy as np
from damnit_ctx import Cell, Variable

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"
CAMERA = "FXE_XAD_GEC/CAM/CAMERA:daqOutput"


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
