# The queue server's startup script (infra/queue_server.py): the RunEngine of the simulated
# beamline, publishing to the home's document bus, its stage motors and its plans.
from bluesky import RunEngine
from tomopipe.infra.simulator.queue_plans import (  # noqa: F401  (offered to the queue)
    STAGE,
    connect,
    mount_sample,
    move_stage,
    request_stop,
    tomo_scan_sim,
)

RE = RunEngine({})
connect(RE)
stage_x, stage_y = STAGE.x, STAGE.y
del connect, STAGE
