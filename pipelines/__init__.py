"""Ready pipelines: YAML files and small build functions, importable as streamzip.pipelines."""
