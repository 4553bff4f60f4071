//! Encore's wire contracts, generated from the `.proto` files under `proto/`:
//!
//! - [`encore::v1`]: `Jobs` (submit, inspect, cancel and watch training jobs on
//!   the scheduler) and `Scoring` (typed churn scores and recommendations on
//!   the model server);
//! - [`inference`]: KServe v2 / Open Inference Protocol
//!   `GRPCInferenceService` with Triton's model-repository extension, wire
//!   compatible with `tritonclient[grpc]`.
//!
//! Servers implement the generated traits in their own crates; this crate
//! holds no behaviour beyond conversions between wire and domain types.

/// Encore's own services.
pub mod encore {
    /// Version 1 of the Encore API.
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("encore.v1");
    }
}

/// KServe v2 / Open Inference Protocol (Triton-compatible).
#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::encore::v1 as api;
    use super::inference;

    /// Field numbers are the wire contract with tritonclient: a renumbered
    /// field would still compile but break every Triton client.
    #[test]
    fn kserve_infer_request_uses_tritons_field_numbers() {
        let request = inference::ModelInferRequest {
            model_name: "churn".into(),
            raw_input_contents: vec![vec![1, 2]],
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        // field 1 (model_name), length-delimited: tag 0x0a; field 7 (raw_input_contents): 0x3a.
        assert_eq!(&bytes[..7], &[0x0a, 5, b'c', b'h', b'u', b'r', b'n']);
        assert_eq!(&bytes[7..], &[0x3a, 2, 1, 2]);
        let back = inference::ModelInferRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn job_messages_round_trip() {
        let job = api::Job {
            id: "job-1".into(),
            kind: api::JobKind::Churn as i32,
            state: api::JobState::Running as i32,
            ..Default::default()
        };
        let back = api::Job::decode(job.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.kind(), api::JobKind::Churn);
        assert_eq!(back.state(), api::JobState::Running);
    }
}
