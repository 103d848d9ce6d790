//! Code spaces carried in PDUs (RFC 7143 §11), as newtypes with named constants.

code_space! {
    /// BHS opcode, low 6 bits of byte 0 (RFC 7143 §11.2.1.2).
    pub struct Opcode(u8) {
        NOP_OUT = 0x00 => "NOP-Out",
        SCSI_COMMAND = 0x01 => "SCSI Command",
        TASK_MGMT_REQUEST = 0x02 => "Task Management Function Request",
        LOGIN_REQUEST = 0x03 => "Login Request",
        TEXT_REQUEST = 0x04 => "Text Request",
        DATA_OUT = 0x05 => "SCSI Data-Out",
        LOGOUT_REQUEST = 0x06 => "Logout Request",
        SNACK_REQUEST = 0x10 => "SNACK Request",
        NOP_IN = 0x20 => "NOP-In",
        SCSI_RESPONSE = 0x21 => "SCSI Response",
        TASK_MGMT_RESPONSE = 0x22 => "Task Management Function Response",
        LOGIN_RESPONSE = 0x23 => "Login Response",
        TEXT_RESPONSE = 0x24 => "Text Response",
        DATA_IN = 0x25 => "SCSI Data-In",
        LOGOUT_RESPONSE = 0x26 => "Logout Response",
        R2T = 0x31 => "Ready To Transfer (R2T)",
        ASYNC_MESSAGE = 0x32 => "Asynchronous Message",
        REJECT = 0x3f => "Reject",
    }
}

impl Opcode {
    /// True for opcodes an initiator sends (RFC 7143 §11.2.1.2: 0x00-0x1f).
    pub fn is_initiator(self) -> bool {
        self.0 < 0x20
    }
}

code_space! {
    /// SCSI status byte (SAM-5), carried in SCSI Response and Data-In.
    pub struct ScsiStatus(u8) {
        GOOD = 0x00 => "GOOD",
        CHECK_CONDITION = 0x02 => "CHECK CONDITION",
        CONDITION_MET = 0x04 => "CONDITION MET",
        BUSY = 0x08 => "BUSY",
        RESERVATION_CONFLICT = 0x18 => "RESERVATION CONFLICT",
        TASK_SET_FULL = 0x28 => "TASK SET FULL",
        ACA_ACTIVE = 0x30 => "ACA ACTIVE",
        TASK_ABORTED = 0x40 => "TASK ABORTED",
    }
}

code_space! {
    /// iSCSI service response in SCSI Response byte 2 (RFC 7143 §11.4.3).
    pub struct ServiceResponse(u8) {
        COMPLETED = 0x00 => "command completed at target",
        TARGET_FAILURE = 0x01 => "target failure",
    }
}

code_space! {
    /// Task management function code (RFC 7143 §11.5.1).
    pub struct TmfFunction(u8) {
        ABORT_TASK = 1 => "ABORT TASK",
        ABORT_TASK_SET = 2 => "ABORT TASK SET",
        CLEAR_ACA = 3 => "CLEAR ACA",
        CLEAR_TASK_SET = 4 => "CLEAR TASK SET",
        LOGICAL_UNIT_RESET = 5 => "LOGICAL UNIT RESET",
        TARGET_WARM_RESET = 6 => "TARGET WARM RESET",
        TARGET_COLD_RESET = 7 => "TARGET COLD RESET",
        TASK_REASSIGN = 8 => "TASK REASSIGN",
    }
}

code_space! {
    /// Task management response code (RFC 7143 §11.6.1).
    pub struct TmfResponse(u8) {
        COMPLETE = 0 => "function complete",
        TASK_DOES_NOT_EXIST = 1 => "task does not exist",
        LUN_DOES_NOT_EXIST = 2 => "LUN does not exist",
        TASK_STILL_ALLEGIANT = 3 => "task still allegiant",
        REASSIGNMENT_NOT_SUPPORTED = 4 => "task allegiance reassignment not supported",
        NOT_SUPPORTED = 5 => "task management function not supported",
        AUTHORIZATION_FAILED = 6 => "function authorization failed",
        REJECTED = 255 => "function rejected",
    }
}

code_space! {
    /// Reject reason (RFC 7143 §11.17.1).
    pub struct RejectReason(u8) {
        DATA_DIGEST_ERROR = 0x02 => "data (payload) digest error",
        SNACK_REJECT = 0x03 => "SNACK reject",
        PROTOCOL_ERROR = 0x04 => "protocol error",
        COMMAND_NOT_SUPPORTED = 0x05 => "command not supported",
        IMMEDIATE_COMMAND_REJECT = 0x06 => "immediate command reject: too many immediate commands",
        TASK_IN_PROGRESS = 0x07 => "task in progress",
        INVALID_DATA_ACK = 0x08 => "invalid data ACK",
        INVALID_PDU_FIELD = 0x09 => "invalid PDU field",
        LONG_OPERATION_REJECT = 0x0a => "long operation reject: out of resources",
        DEPRECATED = 0x0b => "deprecated MaxCmdSN reject",
        WAITING_FOR_LOGOUT = 0x0c => "waiting for logout",
    }
}

code_space! {
    /// Asynchronous event code (RFC 7143 §11.9.1).
    pub struct AsyncEvent(u8) {
        SCSI_EVENT = 0 => "SCSI asynchronous event",
        LOGOUT_REQUEST = 1 => "target requests logout",
        DROP_CONNECTION = 2 => "target will drop the connection",
        DROP_ALL_CONNECTIONS = 3 => "target will drop all connections of the session",
        RENEGOTIATE = 4 => "target requests parameter negotiation",
        TASK_TERMINATION = 5 => "all active tasks for the LU were terminated",
        VENDOR = 255 => "vendor-specific event",
    }
}

code_space! {
    /// Logout reason code (RFC 7143 §11.14.1).
    pub struct LogoutReason(u8) {
        CLOSE_SESSION = 0 => "close the session",
        CLOSE_CONNECTION = 1 => "close the connection",
        REMOVE_CONNECTION_FOR_RECOVERY = 2 => "remove the connection for recovery",
    }
}

code_space! {
    /// Logout response code (RFC 7143 §11.15.1).
    pub struct LogoutResponseCode(u8) {
        SUCCESS = 0 => "connection or session closed successfully",
        CID_NOT_FOUND = 1 => "CID not found",
        RECOVERY_NOT_SUPPORTED = 2 => "connection recovery is not supported",
        CLEANUP_FAILED = 3 => "cleanup failed for various reasons",
    }
}

code_space! {
    /// SNACK type (RFC 7143 §11.16.1).
    pub struct SnackType(u8) {
        DATA_R2T = 0 => "Data/R2T SNACK",
        STATUS = 1 => "Status SNACK",
        DATA_ACK = 2 => "DataACK",
        RDATA = 3 => "R-Data SNACK",
    }
}

/// Login status (RFC 7143 §11.13.5): Status-Class and Status-Detail together.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginStatus {
    pub class: u8,
    pub detail: u8,
}

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus::new(0, 0);
    pub const TARGET_MOVED_TEMPORARILY: LoginStatus = LoginStatus::new(1, 1);
    pub const TARGET_MOVED_PERMANENTLY: LoginStatus = LoginStatus::new(1, 2);
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus::new(2, 0);
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus::new(2, 1);
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus::new(2, 2);
    pub const NOT_FOUND: LoginStatus = LoginStatus::new(2, 3);
    pub const TARGET_REMOVED: LoginStatus = LoginStatus::new(2, 4);
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus::new(2, 5);
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus::new(2, 6);
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus::new(2, 7);
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus::new(2, 8);
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus::new(2, 9);
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus::new(2, 0x0a);
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus::new(2, 0x0b);
    pub const TARGET_ERROR: LoginStatus = LoginStatus::new(3, 0);
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus::new(3, 1);
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus::new(3, 2);

    pub const fn new(class: u8, detail: u8) -> Self {
        LoginStatus { class, detail }
    }

    /// The 16-bit form used in messages: `0x0201`.
    pub fn code(self) -> u16 {
        u16::from(self.class) << 8 | u16::from(self.detail)
    }

    pub fn is_success(self) -> bool {
        self.class == 0
    }

    pub fn is_redirect(self) -> bool {
        self.class == 1
    }

    /// What happened, in words.
    pub fn describe(self) -> &'static str {
        match (self.class, self.detail) {
            (0, _) => "success",
            (1, 1) => "target moved temporarily",
            (1, 2) => "target moved permanently",
            (1, _) => "target redirected",
            (2, 0) => "initiator error",
            (2, 1) => "authentication failure",
            (2, 2) => "authorization failure",
            (2, 3) => "target not found",
            (2, 4) => "target removed",
            (2, 5) => "unsupported iSCSI version",
            (2, 6) => "too many connections",
            (2, 7) => "missing parameter",
            (2, 8) => "can't include in session",
            (2, 9) => "session type not supported",
            (2, 0x0a) => "session does not exist",
            (2, 0x0b) => "invalid request type during login",
            (2, _) => "initiator error",
            (3, 0) => "target error",
            (3, 1) => "service unavailable",
            (3, 2) => "out of resources",
            (3, _) => "target error",
            _ => "unknown login status class",
        }
    }

    /// What the person at the console should do about it.
    pub fn advice(self) -> &'static str {
        match (self.class, self.detail) {
            (2, 1) => "check the CHAP user and secret",
            (2, 2) => "the target's ACL does not admit this initiator name",
            (2, 3) => "check the target IQN (run discovery to list the names)",
            (2, 4) => "the target was removed; run discovery again",
            (2, 5) => "the target does not speak iSCSI version 0",
            (2, 6) => "log out an existing session or raise the target's connection limit",
            (2, 7) => "the target needs a key we did not send; see the target's log",
            (2, 0x0a) => "the session to add a connection to no longer exists",
            (3, 1) | (3, 2) => "the target is busy; retry later",
            (3, _) => "see the target's log",
            (1, _) => "follow the TargetAddress the target gave",
            _ => "see the target's log",
        }
    }
}

impl std::fmt::Debug for LoginStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoginStatus(0x{:04x} {})", self.code(), self.describe())
    }
}

impl std::fmt::Display for LoginStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:04x})", self.describe(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_round_trip_and_print() {
        let op = Opcode(0x1c);
        assert_eq!(format!("{op:?}"), "Opcode(0x1c)");
        assert_eq!(format!("{:?}", Opcode::R2T), "R2T");
        assert_eq!(RejectReason(0x09).to_string(), "invalid PDU field");
        assert_eq!(
            LoginStatus::AUTHENTICATION_FAILURE.to_string(),
            "authentication failure (0x0201)"
        );
        assert_eq!(
            LoginStatus::NOT_FOUND.to_string(),
            "target not found (0x0203)"
        );
    }
}
