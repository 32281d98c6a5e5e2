// Placeholder so the package builds while the ssh tests are written (helper-4 replaces this file).
