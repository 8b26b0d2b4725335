//! Simulated Mango Office VPBX API.
