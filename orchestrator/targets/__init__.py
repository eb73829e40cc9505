"""What a build leaves per target: gates judged, the manifest, the atomic swap-in, the bundle."""
