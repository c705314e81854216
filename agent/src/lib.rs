//! The hotdeploy agent (being written).
