{{- define "gistnet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gistnet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else if contains (include "gistnet.name" .) .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "gistnet.name" .) | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "gistnet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gistnet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gistnet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gistnet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gistnet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gistnet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gistnet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The TCP port of a URL: its explicit port, else 80 for http and 443 otherwise (AWS S3 when empty). */}}
{{/* The MLflow tracking server the job talks to: tracking.mlflowUri, else config.tracking.mlflow_uri; "" when none.
     Credentials never ride in it (they come from tracking.existingSecret). */}}
{{- define "gistnet.trackingUri" -}}
{{- $uri := .Values.tracking.mlflowUri | default (dig "tracking" "mlflow_uri" "" (.Values.config | default dict)) -}}
{{- if and $uri (urlParse $uri).userinfo }}
{{- fail "tracking.mlflowUri / config.tracking.mlflow_uri must not carry user:password@: put the credentials in the Secret named by tracking.existingSecret" }}
{{- end }}
{{- $uri -}}
{{- end }}

{{- define "gistnet.urlPort" -}}
{{- $host := (urlParse .).host | default "" -}}
{{- $parts := splitList ":" $host -}}
{{- if and (gt (len $parts) 1) (not (hasSuffix "]" $host)) }}{{ last $parts }}
{{- else if hasPrefix "http://" . }}80
{{- else }}443
{{- end }}
{{- end }}

{{/* checkov skips that hold for this release, one line of reason each (checkov.io/skipN annotations). */}}
{{- define "gistnet.checkovSkips" -}}
checkov.io/skip1: "CKV_K8S_15=Images are pinned by tag or digest; IfNotPresent avoids a registry pull per retry"
checkov.io/skip2: "CKV_K8S_35=The AWS SDK reads the key pair from env vars; with IRSA there is no Secret at all"
{{- if not .Values.image.digest }}
checkov.io/skip3: "CKV_K8S_43=No digest is known before the image is published; set image.digest to pin it"
{{- end }}
{{- if not (hasKey (.Values.resources.limits | default dict) "cpu") }}
checkov.io/skip4: "CKV_K8S_11=No CPU limit by default; it throttles training; requests reserve the cores (resources.limits.cpu sets one)"
{{- end }}
{{- end }}

{{- define "gistnet.secretName" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecret }}{{ else }}{{ include "gistnet.fullname" . }}-s3{{ end }}
{{- end }}

{{/* The Job spec shared by the Job and the CronJob's jobTemplate. */}}
{{- define "gistnet.jobSpec" -}}
{{- $ddp := .Values.distributed.enabled -}}
{{- $fanout := .Values.fanout.enabled -}}
{{- if $fanout }}
# Fan-out: pod i trains (fold, model) unit i of the run (gistnet train --fold auto: fold =
# i % folds, model = i // folds); the pod finishing the last unit writes the report.
completionMode: Indexed
completions: {{ include "gistnet.fanoutUnits" . }}
parallelism: {{ .Values.fanout.parallelism }}
# Each unit retries on its own; one unit failing for good fails the Job (no report without it).
backoffLimitPerIndex: {{ .Values.fanout.backoffLimitPerIndex }}
maxFailedIndexes: 0
{{- else if $ddp }}
# Data-parallel: one pod per node, each running torchrun; pod i is node rank i.
completionMode: Indexed
completions: {{ .Values.distributed.nodes }}
parallelism: {{ .Values.distributed.nodes }}
# A gang: one failed pod fails the Job (a lone replacement could not rejoin the others).
backoffLimit: 0
podReplacementPolicy: Failed
{{- else }}
backoffLimit: {{ .Values.job.backoffLimit }}
{{- end }}
activeDeadlineSeconds: {{ .Values.job.activeDeadlineSeconds }}
ttlSecondsAfterFinished: {{ .Values.job.ttlSecondsAfterFinished }}
{{- if .Values.job.podFailurePolicy }}
podFailurePolicy:
  # Exit codes: README "Exit codes". 2 usage, 3 config, 4 data, 6 device (no GPU, or out
  # of GPU memory), 7 diverged, 9 unusable model (predict), 11 a refused promotion (a
  # decision): retrying cannot help. 8 is SIGTERM (checkpointed), 10 another live process
  # holds the unit's lease (an overlapping run): retry without counting it.
  rules:
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"  # required by the schemas of Kubernetes < 1.35
    - action: {{ ternary "FailIndex" "FailJob" $fanout }}
      onExitCodes:
        containerName: gistnet
        operator: In
        values: [2, 3, 4, 6, 7, 9, 11]
    - action: Ignore
      onExitCodes:
        containerName: gistnet
        operator: In
        values: [8, 10]
{{- end }}
template:
  metadata:
    labels:
      {{- include "gistnet.selectorLabels" . | nindent 6 }}
      {{- with .Values.podLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    annotations:
      checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
      {{- with .Values.podAnnotations }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
  spec:
    restartPolicy: Never
    {{- if $ddp }}
    subdomain: {{ include "gistnet.workersService" . }}
    {{- end }}
    serviceAccountName: {{ include "gistnet.serviceAccountName" . }}
    automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
    terminationGracePeriodSeconds: {{ .Values.job.terminationGracePeriodSeconds }}
    {{- with .Values.priorityClassName }}
    priorityClassName: {{ . }}
    {{- end }}
    {{- with .Values.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml .Values.podSecurityContext | nindent 6 }}
    containers:
      - name: gistnet
        image: {{ include "gistnet.image" . }}
        imagePullPolicy: {{ .Values.image.pullPolicy }}
        args:
          {{- if eq .Values.mode "predict" }}
          {{- include "gistnet.predictArgs" . | nindent 10 }}
          {{- else if eq .Values.mode "evaluate" }}
          {{- include "gistnet.evaluateArgs" . | nindent 10 }}
          {{- else if eq .Values.mode "readers" }}
          {{- include "gistnet.readersArgs" . | nindent 10 }}
          {{- else }}
          {{- if $ddp }}
          - launch
          {{- end }}
          - train
          - --config
          - /etc/gistnet/config.yaml
          {{- if $fanout }}
          - --fold
          - auto
          {{- end }}
          {{- end }}
          {{- range .Values.extraArgs }}
          - {{ . | quote }}
          {{- end }}
        env:
          {{- if ne .Values.mode "train" }}
          # Each predict Job writes under <predict.output>/<its own name>; an evaluate Job is named after it
          # unless evaluate.name says otherwise ($(JOB_NAME) in args).
          - name: JOB_NAME
            valueFrom:
              fieldRef:
                fieldPath: metadata.labels['batch.kubernetes.io/job-name']
          {{- else }}
          - name: GISTNET_DATA_URI
            value: {{ .Values.data.uri | quote }}
          - name: GISTNET_OUTPUT_URI
            value: {{ .Values.output.uri | quote }}
          - name: GISTNET_OUTPUT_RUN_ID
            {{- if .Values.job.runId }}
            value: {{ .Values.job.runId | quote }}
            {{- else }}
            valueFrom:
              fieldRef:
                fieldPath: metadata.labels['batch.kubernetes.io/job-name']
            {{- end }}
          {{- end }}
          {{- if $fanout }}
          - name: FANOUT_INDEX  # the unit, in the Pushgateway grouping key: the pods' pushes do not overwrite each other
            valueFrom:
              fieldRef:
                fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
          {{- end }}
          - name: GISTNET_METRICS_PORT
            value: {{ .Values.metrics.port | quote }}
          - name: GISTNET_METRICS_JOB_NAME
            value: {{ .Values.metrics.jobName | quote }}
          - name: GISTNET_METRICS_GROUPING_LABELS
            value: {{ printf "%s=%s%s" (ternary "cronjob" "k8s_job" (ne .Values.schedule "")) (include "gistnet.fullname" .) (ternary ",index=$(FANOUT_INDEX)" "" $fanout) | quote }}
          {{- with .Values.metrics.pushgateway }}
          - name: GISTNET_METRICS_PUSHGATEWAY
            value: {{ . | quote }}
          {{- end }}
          {{- if and .Values.promotion.enabled (ne .Values.mode "predict") }}
          # The champion/challenger gate runs after training, in the process that writes the complete report.
          - name: GISTNET_PROMOTION_REGISTRY
            value: {{ required "promotion.registry is required with promotion.enabled" .Values.promotion.registry | quote }}
          - name: GISTNET_PROMOTION_DATA
            value: {{ required "promotion.data is required with promotion.enabled" .Values.promotion.data | quote }}
          {{- end }}
          {{- with include "gistnet.s3Env" . }}
          {{- . | nindent 10 }}
          {{- end }}
          {{- if $ddp }}
          {{- include "gistnet.torchrunEnv" . | nindent 10 }}
          - name: PET_NNODES
            value: {{ .Values.distributed.nodes | quote }}
          - name: PET_NPROC_PER_NODE
            value: {{ .Values.distributed.procPerNode | quote }}
          - name: PET_NODE_RANK
            valueFrom:
              fieldRef:
                fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
          - name: PET_MASTER_ADDR
            value: {{ printf "%s-0.%s" (include "gistnet.fullname" .) (include "gistnet.workersService" .) | quote }}
          - name: PET_MASTER_PORT
            value: {{ .Values.distributed.port | quote }}
          {{- end }}
          {{- with .Values.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        ports:
          {{- include "gistnet.metricsPorts" . | nindent 10 }}
          {{- if $ddp }}
          - name: rendezvous
            containerPort: {{ .Values.distributed.port }}
            protocol: TCP
          {{- end }}
        resources:
          {{- toYaml .Values.resources | nindent 10 }}
        securityContext:
          {{- toYaml .Values.securityContext | nindent 10 }}
        volumeMounts:
          - name: config
            mountPath: /etc/gistnet
            readOnly: true
          - name: scratch
            mountPath: /tmp
          - name: dshm
            mountPath: /dev/shm
    volumes:
      - name: config
        configMap:
          name: {{ include "gistnet.fullname" . }}
      - name: scratch
        emptyDir:
          sizeLimit: {{ .Values.scratch.sizeLimit }}
      - name: dshm
        emptyDir:
          medium: Memory
          sizeLimit: {{ .Values.shm.sizeLimit }}
    {{- with .Values.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}

{{/* Seconds in a Prometheus duration of one unit (26h, 90m, 2d; values.schema.json allows no other form). */}}
{{- define "gistnet.durationSeconds" -}}
{{- $unit := regexFind "[smhd]$" . -}}
{{- mul (trimSuffix $unit . | int) (get (dict "s" 1 "m" 60 "h" 3600 "d" 86400) $unit) -}}
{{- end }}

{{/* `gistnet predict` arguments for mode: predict. */}}
{{- define "gistnet.predictArgs" -}}
- predict
- --config
- /etc/gistnet/config.yaml
- --run
- {{ required "predict.run is required with mode: predict" .Values.predict.run | quote }}
- --model
- {{ .Values.predict.model | quote }}
- --data
- {{ required "predict.data is required with mode: predict" .Values.predict.data | quote }}
- --output
- {{ printf "%s/$(JOB_NAME)" (required "predict.output is required with mode: predict" .Values.predict.output | trimSuffix "/") | quote }}
- --engine
- {{ .Values.predict.engine | quote }}
{{- with .Values.predict.threshold }}
- --threshold
- {{ . | quote }}
{{- end }}
{{- if .Values.predict.batchSize }}
- --batch-size
- {{ .Values.predict.batchSize | quote }}
{{- end }}
{{- end }}

{{/* `gistnet evaluate` arguments for mode: evaluate. */}}
{{- define "gistnet.evaluateArgs" -}}
- evaluate
- --config
- /etc/gistnet/config.yaml
- --run
- {{ required "evaluate.run is required with mode: evaluate" .Values.evaluate.run | quote }}
- --data
- {{ required "evaluate.data is required with mode: evaluate" .Values.evaluate.data | quote }}
- --model
- {{ .Values.evaluate.model | quote }}
- --name
- {{ .Values.evaluate.name | default "$(JOB_NAME)" | quote }}
{{- with .Values.evaluate.output }}
- --output
- {{ . | quote }}
{{- end }}
{{- if .Values.evaluate.batchSize }}
- --batch-size
- {{ .Values.evaluate.batchSize | quote }}
{{- end }}
{{- end }}

{{/* `gistnet readers` arguments for mode: readers. */}}
{{- define "gistnet.readersArgs" -}}
- readers
- --config
- /etc/gistnet/config.yaml
- --readers
- {{ required "readers.file is required with mode: readers" .Values.readers.file | quote }}
{{- if or .Values.readers.run .Values.readers.data }}
- --run
- {{ required "readers.run and readers.data go together" .Values.readers.run | quote }}
- --data
- {{ required "readers.run and readers.data go together" .Values.readers.data | quote }}
- --model
- {{ .Values.readers.model | quote }}
{{- end }}
{{- if .Values.readers.output }}
- --output
- {{ .Values.readers.output | quote }}
{{- else if not .Values.readers.run }}
{{- fail "readers.output is required with mode: readers when readers.run is empty" }}
{{- end }}
- --covariance
- {{ .Values.readers.covariance | quote }}
{{- end }}

{{/* The headless Service that gives each pod of the distributed Job a DNS name. */}}
{{- define "gistnet.workersService" -}}
{{- printf "%s-workers" (include "gistnet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* One metrics port per training process of a pod: rank r of the node serves metrics.port + r. */}}
{{- define "gistnet.metricsPorts" -}}
{{- $procs := ternary (int .Values.distributed.procPerNode) 1 .Values.distributed.enabled -}}
{{- range $r := until $procs }}
- name: {{ ternary "metrics" (printf "metrics-%d" $r) (eq $r 0) }}
  containerPort: {{ add $.Values.metrics.port $r }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* Environment of a torchrun pod that both engines share (never PET_*: Trainer sets those). */}}
{{- define "gistnet.torchrunEnv" -}}
- name: TORCH_ELASTIC_SHUTDOWN_TIMEOUT
  value: {{ max 1 (sub .Values.job.terminationGracePeriodSeconds 15) | quote }}
{{- range $name, $value := .Values.distributed.nccl }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Refuse distributed settings that cannot work, with the value to change. */}}
{{/* The run's (fold, model) units: folds (1 for a hold-out) x models, from the config values
with gistnet's own defaults (config.py: split.folds 5, both ResNets). */}}
{{- define "gistnet.fanoutUnits" -}}
{{- $kfold := eq (dig "split" "method" "holdout" .Values.config) "kfold" -}}
{{- $folds := ternary (dig "split" "folds" 5 .Values.config | int) 1 $kfold -}}
{{- mul $folds (len (dig "train" "models" (list "resnet34" "resnet50") .Values.config)) -}}
{{- end }}

{{- define "gistnet.checkDistributed" -}}
{{- if .Values.fanout.enabled }}
{{- if ne .Values.mode "train" }}
{{- fail (printf "fanout.enabled is for training; mode: %s runs one process" .Values.mode) }}
{{- end }}
{{- if .Values.distributed.enabled }}
{{- fail "fanout.enabled and distributed.enabled together are not supported: choose one pod per (fold, model) unit or one data-parallel run" }}
{{- end }}
{{- end }}
{{- if .Values.distributed.enabled }}
{{- if ne .Values.mode "train" }}
{{- fail (printf "distributed.enabled is for training; mode: %s runs one process" .Values.mode) }}
{{- end }}
{{- if .Values.schedule }}
{{- fail "distributed.enabled with a schedule is not supported: the pods find the master by the Job's name, which a CronJob varies" }}
{{- end }}
{{- $gpus := get (.Values.resources.limits | default dict) "nvidia.com/gpu" }}
{{- if and $gpus (ne (int $gpus) (int .Values.distributed.procPerNode)) }}
{{- fail (printf "distributed.procPerNode (%d) must equal resources.limits.nvidia.com/gpu (%d): one training process per GPU" (int .Values.distributed.procPerNode) (int $gpus)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The S3 endpoint, region and credentials (from a Secret, never inline) of every mode, the
     compile cache's MAC key (from a Secret; without it the cache is off), the pseudonym key, and
     the MLflow server with its credentials (from a Secret, each key optional). */}}
{{- define "gistnet.s3Env" -}}
{{- with .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- if or .Values.s3.existingSecret .Values.s3.createSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "gistnet.secretName" . }}
      key: {{ .Values.s3.secretKeys.accessKeyId }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "gistnet.secretName" . }}
      key: {{ .Values.s3.secretKeys.secretAccessKey }}
{{- end }}
{{- with .Values.compileCache.existingSecret }}
- name: GISTNET_COMPILE_CACHE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.compileCache.secretKey }}
{{- end }}
{{- with .Values.pseudonym.existingSecret }}
- name: GISTNET_PSEUDONYM_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.pseudonym.secretKey }}
{{- end }}
{{- with .Values.tracking.mlflowUri }}
- name: GISTNET_TRACKING_MLFLOW_URI
  value: {{ . | quote }}
{{- end }}
{{- with .Values.tracking.existingSecret }}
{{- range $var, $key := dict "MLFLOW_TRACKING_USERNAME" $.Values.tracking.secretKeys.username "MLFLOW_TRACKING_PASSWORD" $.Values.tracking.secretKeys.password "MLFLOW_TRACKING_TOKEN" $.Values.tracking.secretKeys.token }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.tracking.existingSecret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
