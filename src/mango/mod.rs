//! Mango Office VPBX client.
