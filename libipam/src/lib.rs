pub fn placeholder() {}
pub mod cni;
