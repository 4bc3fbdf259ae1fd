"""Names shared by the bench's modules."""

# A detection path is a detector kind searched whole on every frame ("res10"), or with regions
# around known faces between whole-frame passes ("res10+regions", detector.every_n_frames > 1).
REGIONS_SUFFIX = "+regions"
# Goals from the issues; reported next to the figures, never asserted.
GOAL_FPS_1T = 30.0
GOAL_LATENCY_MS = 300.0
GOAL_RSS_MB = 150.0
GOAL_KERAS_RATIO = 20.0
GOAL_SOAK_GROWTH_MB = 5.0
