//! SCSI over anything that runs a command: the checked execution (UNIT ATTENTION and
//! BUSY retried, as the Linux SCSI midlayer does) and the discovery commands a host
//! needs for each LUN (REPORT LUNS, INQUIRY, READ CAPACITY), written once for every way
//! a command reaches a session: a [`Session`](crate::Session), or a thread that owns a
//! [`Poller`](crate::Poller) and takes commands from other threads (oxiscsid's session
//! workers).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use oxiscsi_proto::pdu::{CdbBuf, Lun, ScsiStatus};
use oxiscsi_proto::session::{Command, ScsiResult};
use oxiscsi_scsi::cdb::Cdb;
use oxiscsi_scsi::data::{lun_number, parse_report_luns, Capacity, StandardInquiry};
use oxiscsi_scsi::{Sense, SenseKey};

use crate::error::Error;

/// Retries for UNIT ATTENTION (reported once after login or reset) and for BUSY/TASK SET
/// FULL.
pub const RETRIES: usize = 3;

/// Runs one command to its end and returns its outcome whatever the SCSI status.
pub trait Execute: Sync {
    fn execute_command(
        &self,
        cmd: Command,
    ) -> impl Future<Output = Result<ScsiResult, Error>> + Send;
}

/// What to do with a command's outcome after `tries` retries.
#[derive(Debug)]
pub enum Verdict {
    /// GOOD (or CONDITION MET): done.
    Done,
    /// UNIT ATTENTION: send it again now.
    Retry,
    /// BUSY or TASK SET FULL: send it again after this long.
    RetryAfter(Duration),
    /// Any other status, or out of retries: [`Error::Scsi`] with the decoded sense.
    Fail(Error),
}

/// SAM-5 §5.3 status handling for an initiator that retries transient conditions a few
/// times ([`RETRIES`]): UNIT ATTENTION at once, BUSY and TASK SET FULL after 20, 40, 80 ms.
pub fn judge(r: &ScsiResult, tries: usize) -> Verdict {
    if r.status == ScsiStatus::GOOD || r.status == ScsiStatus::CONDITION_MET {
        return Verdict::Done;
    }
    let sense = if r.sense.is_empty() {
        None
    } else {
        Sense::parse(&r.sense).ok()
    };
    if tries < RETRIES {
        if r.status == ScsiStatus::CHECK_CONDITION
            && sense
                .as_ref()
                .is_some_and(|s| s.key == SenseKey::UNIT_ATTENTION)
        {
            tracing::debug!(sense = %sense.as_ref().map(|s| s.to_string()).unwrap_or_default(), "unit attention; retrying");
            return Verdict::Retry;
        }
        if r.status == ScsiStatus::BUSY || r.status == ScsiStatus::TASK_SET_FULL {
            return Verdict::RetryAfter(Duration::from_millis(10 << (tries + 1)));
        }
    }
    Verdict::Fail(Error::Scsi {
        status: r.status,
        sense,
    })
}

/// Run a command; a status other than GOOD becomes [`Error::Scsi`] with decoded sense,
/// after the retries [`judge`] allows.
pub async fn execute_checked<E: Execute + ?Sized>(
    e: &E,
    cmd: Command,
) -> Result<ScsiResult, Error> {
    let mut tries = 0;
    loop {
        let r = e.execute_command(cmd.clone()).await?;
        match judge(&r, tries) {
            Verdict::Done => return Ok(r),
            Verdict::Retry => {}
            Verdict::RetryAfter(d) => crate::time::sleep(d).await?,
            Verdict::Fail(err) => return Err(err),
        }
        tries += 1;
    }
}

fn command(lun: u16, cdb: impl Into<CdbBuf>, read_len: u32) -> Command {
    Command::new(Lun::from_number(lun), cdb).with_read(read_len)
}

/// Standard INQUIRY.
pub async fn inquiry<E: Execute + ?Sized>(e: &E, lun: u16) -> Result<StandardInquiry, Error> {
    let cdb = Cdb::Inquiry {
        evpd: false,
        page: 0,
        alloc: 255,
    };
    let r = execute_checked(e, command(lun, cdb.to_bytes(), 255)).await?;
    StandardInquiry::parse(&r.data).map_err(|e| Error::BadData(e.to_string()))
}

/// READ CAPACITY(16), falling back to (10) when the target does not support it. A block
/// size of 0 or above 1 MiB is refused as bad data.
pub async fn read_capacity<E: Execute + ?Sized>(e: &E, lun: u16) -> Result<Capacity, Error> {
    let cdb16 = Cdb::ReadCapacity16 { alloc: 32 }.to_bytes();
    let cap = match execute_checked(e, command(lun, cdb16, 32)).await {
        Ok(r) => Capacity::parse16(&r.data).map_err(|e| Error::BadData(e.to_string()))?,
        Err(Error::Scsi { sense: Some(s), .. }) if s.key == SenseKey::ILLEGAL_REQUEST => {
            let cdb10 = Cdb::ReadCapacity10.to_bytes();
            let r = execute_checked(e, command(lun, cdb10, 8)).await?;
            Capacity::parse10(&r.data).map_err(|e| Error::BadData(e.to_string()))?
        }
        Err(e) => return Err(e),
    };
    if cap.block_size == 0 || cap.block_size > (1 << 20) {
        return Err(Error::BadData(format!(
            "block size {} reported for LUN {lun}",
            cap.block_size
        )));
    }
    Ok(cap)
}

/// LUN numbers from REPORT LUNS (LUN 0 addresses the target), sorted, each once.
pub async fn report_luns<E: Execute + ?Sized>(e: &E) -> Result<Vec<u16>, Error> {
    let mut alloc = 1024u32;
    loop {
        let cdb = Cdb::ReportLuns {
            select_report: 0,
            alloc,
        };
        let r = execute_checked(e, command(0, cdb.to_bytes(), alloc)).await?;
        let (luns, list_len) =
            parse_report_luns(&r.data).map_err(|e| Error::BadData(e.to_string()))?;
        if u64::from(list_len) + 8 > u64::from(alloc) && alloc < (1 << 20) {
            alloc = (list_len + 8).min(1 << 20);
            continue;
        }
        let mut v: Vec<u16> = luns.into_iter().filter_map(lun_number).collect();
        v.sort_unstable();
        v.dedup();
        return Ok(v);
    }
}

/// SYNCHRONIZE CACHE(10) over the whole LUN.
pub fn synchronize_cache(lun: u16) -> Command {
    let cdb = Cdb::SynchronizeCache10 {
        lba: 0,
        blocks: 0,
        immed: false,
    };
    command(lun, cdb.to_bytes(), 0)
}

/// SYNCHRONIZE CACHE over the whole LUN, checked.
pub async fn flush<E: Execute + ?Sized>(e: &E, lun: u16) -> Result<(), Error> {
    execute_checked(e, synchronize_cache(lun)).await.map(|_| ())
}

/// WRITE SAME(16) of one block's `pattern` over `blocks` blocks, optionally unmapping.
pub fn write_same(lun: u16, lba: u64, blocks: u32, pattern: Bytes, unmap: bool) -> Command {
    let cdb = Cdb::WriteSame16 {
        lba,
        blocks,
        unmap,
        anchor: false,
        ndob: false,
    };
    Command::new(Lun::from_number(lun), cdb.to_bytes()).with_data_out(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxiscsi_proto::session::Residual;

    fn result(status: ScsiStatus, sense: &[u8]) -> ScsiResult {
        ScsiResult {
            status,
            sense: Bytes::copy_from_slice(sense),
            data: Bytes::new(),
            residual: Residual::None,
        }
    }

    /// Fixed-format sense with a key.
    fn sense(key: u8) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10;
        s
    }

    #[test]
    fn unit_attention_and_busy_are_retried_a_few_times_then_fail() {
        let ua = result(ScsiStatus::CHECK_CONDITION, &sense(0x06));
        assert!(matches!(judge(&ua, 0), Verdict::Retry));
        assert!(matches!(
            judge(&ua, RETRIES),
            Verdict::Fail(Error::Scsi { .. })
        ));
        let busy = result(ScsiStatus::BUSY, &[]);
        assert!(
            matches!(judge(&busy, 0), Verdict::RetryAfter(d) if d == Duration::from_millis(20))
        );
        assert!(
            matches!(judge(&busy, 2), Verdict::RetryAfter(d) if d == Duration::from_millis(80))
        );
        assert!(matches!(judge(&busy, RETRIES), Verdict::Fail(_)));
        let medium = result(ScsiStatus::CHECK_CONDITION, &sense(0x03));
        match judge(&medium, 0) {
            Verdict::Fail(Error::Scsi { status, sense }) => {
                assert_eq!(status, ScsiStatus::CHECK_CONDITION);
                assert_eq!(sense.map(|s| s.key), Some(SenseKey::MEDIUM_ERROR));
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            judge(&result(ScsiStatus::GOOD, &[]), 0),
            Verdict::Done
        ));
    }
}
