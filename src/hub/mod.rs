//! The model registry and the fetch step: names to files, downloads and checksums.
