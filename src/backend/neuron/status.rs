//! libnrt status codes as errors: every non-zero status becomes
//! `BackendError::Nrt` with the call's name and the status's name. The names come
//! from our own table (the SDK 2.28 list plus later codes), because
//! `nrt_get_status_as_str` is not exported by every libnrt.

use super::ffi::NrtStatus;
use crate::backend::BackendError;

pub const SUCCESS: NrtStatus = 0;
pub const RESOURCE: NrtStatus = 4;
pub const TIMEOUT: NrtStatus = 5;
pub const EXEC_COMPLETED_WITH_NUM_ERR: NrtStatus = 1003;
pub const EXEC_NC_BUSY: NrtStatus = 1005;

/// The header's name for a status code.
pub fn name(status: NrtStatus) -> &'static str {
    match status {
        0 => "NRT_SUCCESS",
        1 => "NRT_FAILURE",
        2 => "NRT_INVALID",
        3 => "NRT_INVALID_HANDLE",
        4 => "NRT_RESOURCE (out of device memory)",
        5 => "NRT_TIMEOUT",
        6 => "NRT_HW_ERROR",
        7 => "NRT_QUEUE_FULL",
        9 => "NRT_LOAD_NOT_ENOUGH_NC",
        10 => "NRT_UNSUPPORTED_NEFF_VERSION",
        11 => "NRT_FAIL_HOST_MEM_ALLOC",
        13 => "NRT_UNINITIALIZED",
        14 => "NRT_CLOSED",
        15 => "NRT_QUEUE_EMPTY",
        101 => "NRT_EXEC_UNIT_UNRECOVERABLE",
        1002 => "NRT_EXEC_BAD_INPUT",
        1003 => "NRT_EXEC_COMPLETED_WITH_NUM_ERR (NaN in the results)",
        1004 => "NRT_EXEC_COMPLETED_WITH_ERR",
        1005 => "NRT_EXEC_NC_BUSY",
        1006 => "NRT_EXEC_OOB",
        1100 => "NRT_COLL_PENDING",
        1200..=1206 => "hardware or collective error",
        _ => "unknown status",
    }
}

/// `Ok` for `NRT_SUCCESS`, else the error naming `op`.
pub fn check(op: &'static str, status: NrtStatus) -> Result<(), BackendError> {
    if status == SUCCESS {
        return Ok(());
    }
    Err(BackendError::Nrt { op, status, message: name(status).to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_names_the_call_and_the_status() {
        assert!(check("nrt_execute", SUCCESS).is_ok());
        let err = check("nrt_execute", EXEC_NC_BUSY).unwrap_err().to_string();
        assert!(
            err.contains("nrt_execute") && err.contains("1005") && err.contains("NRT_EXEC_NC_BUSY"),
            "{err}"
        );
        assert_eq!(name(RESOURCE), "NRT_RESOURCE (out of device memory)");
        assert_eq!(name(TIMEOUT), "NRT_TIMEOUT");
        assert_eq!(name(EXEC_COMPLETED_WITH_NUM_ERR), "NRT_EXEC_COMPLETED_WITH_NUM_ERR (NaN in the results)");
        assert_eq!(name(1203), "hardware or collective error");
        assert_eq!(name(12), "unknown status");
    }
}
