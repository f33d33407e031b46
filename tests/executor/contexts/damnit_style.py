# A context file written for DAMNIT 0.4: it imports damnit_ctx and uses only
# DAMNIT's API. runstream must run it unchanged.
import numpy as np
import xarray as xr
from damnit_ctx import Cell, Skip, Variable

XGM = "SA1_XTD2_XGM/DOOCS/MAIN"
CAMERA = "FXE_XAD_GEC/CAM/CAMERA:daqOutput"


@Variable(title="Trains")
def n_trains(run):
    """Number of trains in the run."""
    return len(run.train_ids)


@Variable(title="XGM/Intensity", summary="mean", units="uJ", tags=["xgm", "beam"])
def xgm_intensity(run):
    """Pulse energy of the first pulse, per train."""
    return run[XGM + ":output", "data.intensityTD"].xarray()[:, 0]


@Variable(title="XGM/Beam x", summary="mean")
def xgm_x(run):
    return run[XGM, "beamPosition.ixPos"].ndarray()


@Variable(title="Camera/Mean image")
def camera_mean(run):
    return run[CAMERA, "data.image.pixels"].ndarray()[:20].mean(axis=0)


@Variable(title="Camera/Peak", data="proc")
def camera_peak(run, image: "var#camera_mean"):
    return Cell(float(np.max(image)), bold=True)


@Variable(title="Run info")
def run_info(run, number: "meta#run_number", proposal: "meta#proposal"):
    return f"p{proposal} r{number}"


@Variable(title="Sample", tags="meta")
def sample(run, name: "mymdc#sample_name"):
    return name


@Variable(title="Detector")
def detector(run):
    if "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf" not in run.all_sources:
        raise Skip("No AGIPD in this run")
    return 1


@Variable(title="Energy ratio")
def energy_ratio(run, intensity: "var#xgm_intensity", trains: "var#n_trains"):
    return float(intensity.sum()) / trains


@Variable(title="Norm", transient=True)
def _norm(run, trains: "var#n_trains"):
    return trains / 100


@Variable(title="Normalised trains")
def normalised(run, norm: "var#_norm"):
    return norm * 2


@Variable(title="Summary table")
def table(run, x: "var#xgm_*"):
    return xr.Dataset({k: ("t", np.asarray(v, dtype=float)[:10]) for k, v in x.items()})
