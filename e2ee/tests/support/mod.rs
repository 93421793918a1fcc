pub mod group_transcript;
pub mod transcript;
